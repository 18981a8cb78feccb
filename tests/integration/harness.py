"""Run the collection through Ansible against throwaway namespaces, and make traffic.

Everything here runs on the controller (the test process); modules run on
the managed host, which is this machine, through /usr/bin/python3.
"""

import json
import os
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid

import jinja2
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
COLLECTIONS = os.path.join(ROOT, '.build', 'collections')
VENV_BIN = os.path.join(ROOT, '.venv', 'bin')
TEMPLATE = os.path.join(ROOT, 'bpf', 'dispatch.c.j2')
HOST_PYTHON = '/usr/bin/python3'


def ansible_env(extra=None):
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
        'ANSIBLE_STDOUT_CALLBACK': 'results_json',
        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(os.path.dirname(__file__), 'callback_plugins'),
        'ANSIBLE_LOAD_CALLBACK_PLUGINS': '1',
        'ANSIBLE_PYTHON_INTERPRETER': HOST_PYTHON,
        'ANSIBLE_LOCALHOST_WARNING': '0',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'ANSIBLE_DEPRECATION_WARNINGS': '0',
        'PATH': VENV_BIN + os.pathsep + env.get('PATH', ''),
    })
    env.update(extra or {})
    return env


class PlaybookResult(object):
    def __init__(self, raw, rc, stderr):
        self.raw = raw
        self.rc = rc
        self.stderr = stderr
        self.tasks = []
        for play in raw.get('plays', []):
            for task in play.get('tasks', []):
                self.tasks.append(task)

    def result(self, index, host='localhost'):
        return self.tasks[index]['hosts'][host]

    def by_name(self, name, host='localhost'):
        for task in self.tasks:
            if task['task']['name'] == name:
                return task['hosts'][host]
        raise KeyError(name)

    @property
    def results(self):
        return [t['hosts'].get('localhost') for t in self.tasks]


def run_playbook(playbook, extra_vars=None, check=False, diff=False, inventory=None,
                 expect_rc=None, args=(), env=None, timeout=600):
    """Run a playbook (path or list of plays); return PlaybookResult."""
    with tempfile.TemporaryDirectory(prefix='bpfsteer-pb-') as tmp:
        if not isinstance(playbook, str):
            path = os.path.join(tmp, 'play.yml')
            with open(path, 'w') as f:
                yaml.safe_dump(playbook, f, sort_keys=False)
            playbook = path
        cmd = [os.path.join(VENV_BIN, 'ansible-playbook'), playbook]
        if inventory is None:
            inv = os.path.join(tmp, 'inventory.ini')
            with open(inv, 'w') as f:
                f.write('localhost ansible_connection=local ansible_python_interpreter=%s\n' % HOST_PYTHON)
            inventory = inv
        cmd += ['-i', inventory]
        if extra_vars:
            evars = os.path.join(tmp, 'extra.json')
            with open(evars, 'w') as f:
                json.dump(extra_vars, f)
            cmd += ['-e', '@' + evars]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        cmd += list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env), timeout=timeout, check=False)
    try:
        raw = json.loads(proc.stdout[proc.stdout.index('{'):])
    except ValueError:
        raise AssertionError('ansible-playbook printed no JSON (rc %d)\nstdout:\n%s\nstderr:\n%s'
                             % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    result = PlaybookResult(raw, proc.returncode, proc.stderr)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, (proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:])
    return result


def play(tasks, hosts='localhost', gather_facts=False, **kw):
    p = {'name': 'test', 'hosts': hosts, 'gather_facts': gather_facts, 'tasks': tasks}
    p.update(kw)
    return [p]


def module_task(module, args, name=None, **kw):
    task = {'name': name or module, 'bpfsteer.sk_lookup.%s' % module: args}
    task.update(kw)
    return task


def run_module(module, args, check=False, diff=False, expect_failure=False):
    """One module call through ansible-playbook; returns its result dict."""
    task = module_task(module, args, ignore_errors=expect_failure)
    res = run_playbook(play([task]), check=check, diff=diff)
    out = res.result(0)
    if not expect_failure:
        detail = out.get('module_stderr', '') + out.get('module_stdout', '')
        assert not out.get('failed'), '%s\n%s' % (out.get('msg'), detail)
    return out


def render_dispatch(**variables):
    """Render bpf/dispatch.c.j2 as the template module would."""
    import sys
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    from ansible_collections.bpfsteer.sk_lookup.plugins.filter.sk_lookup import sk_lookup_protected
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(TEMPLATE)),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters['bpfsteer.sk_lookup.sk_lookup_protected'] = sk_lookup_protected
    return env.get_template(os.path.basename(TEMPLATE)).render(**variables)


# --- namespaces and traffic -------------------------------------------------

class Namespace(object):
    """A throwaway network namespace with loopback up."""

    def __init__(self, prefix='bpfsteer-t'):
        self.name = '%s-%s' % (prefix, uuid.uuid4().hex[:8])
        self.path = '/run/netns/%s' % self.name
        subprocess.run(['ip', 'netns', 'add', self.name], check=True)
        self.ip('link', 'set', 'lo', 'up')

    def ip(self, *args):
        subprocess.run(['ip', '-n', self.name] + list(args), check=True)

    def add_address(self, cidr):
        """Make a prefix local: an address on lo, or a local route for a whole prefix."""
        if ':' in cidr:
            self.ip('-6', 'addr', 'add', cidr, 'dev', 'lo', 'nodad')
        else:
            self.ip('addr', 'add', cidr, 'dev', 'lo')

    def add_local_route(self, cidr):
        self.ip('-6' if ':' in cidr else '-4', 'route', 'add', 'local', cidr, 'dev', 'lo')

    def exec_args(self, argv):
        return ['ip', 'netns', 'exec', self.name] + list(argv)

    def popen(self, argv, **kw):
        return subprocess.Popen(self.exec_args(argv), **kw)

    def run(self, argv, **kw):
        kw.setdefault('capture_output', True)
        kw.setdefault('text', True)
        check = kw.pop('check', False)
        return subprocess.run(self.exec_args(argv), check=check, **kw)

    def python(self, code, timeout=60, check=True):
        """Run Python code inside the namespace; returns its stdout parsed as JSON."""
        proc = self.run([HOST_PYTHON, '-c', textwrap.dedent(code)], timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError('namespace python failed:\n%s\n%s' % (proc.stdout, proc.stderr))
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def delete(self):
        pids = subprocess.run(['ip', 'netns', 'pids', self.name], capture_output=True, text=True,
                              check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        subprocess.run(['ip', 'netns', 'del', self.name], check=False)


# A small server that runs inside a namespace and tags every reply with its
# name, so a test can tell which socket got a connection or a datagram.
SERVER = r'''
import socket, sys, os, threading
name, proto, family, host, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
register = sys.argv[6:]  # optional: pin_dir label -- the process hands its own socket over
fam = socket.AF_INET6 if family == '6' else socket.AF_INET

def hand_over(s):
    if not register:
        return
    sys.path.insert(0, os.environ['BPFSTEER_COLLECTIONS'])
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher
    with dispatcher.open_dispatcher(register[0]) as disp:
        dest = disp.ensure_destination(register[1], fam, proto)
        disp.set_socket(dest, s.fileno())

def v6only(s):
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)

if proto == 'tcp':
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v6only(s)
    s.bind((host, port)); s.listen(512)
    hand_over(s)
    print('%d %d' % (s.getsockname()[1], s.fileno()), flush=True)
    def serve(c):
        try:
            data = c.recv(1024)
            c.sendall(name.encode() + b' ' + data)
        finally:
            c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
else:
    # A steered datagram arrives for an address the socket is not bound to; the
    # reply must leave from that address (IP_PKTINFO), as any sk_lookup UDP service must.
    s = socket.socket(fam, socket.SOCK_DGRAM)
    v6only(s)
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, 8, 1)            # IP_PKTINFO
        level, kind = socket.IPPROTO_IP, 8
    else:
        s.setsockopt(socket.IPPROTO_IPV6, 49, 1)         # IPV6_RECVPKTINFO
        # IPv6 only lets a reply leave from an address configured on an interface,
        # unless the socket may use any (an AnyIP local route is not enough).
        s.setsockopt(socket.IPPROTO_IPV6, 78, 1)         # IPV6_FREEBIND
        level, kind = socket.IPPROTO_IPV6, 50            # IPV6_PKTINFO
    s.bind((host, port))
    hand_over(s)
    print('%d %d' % (s.getsockname()[1], s.fileno()), flush=True)
    while True:
        data, anc, _flags, peer = s.recvmsg(2048, 256)
        cmsgs = []
        for lvl, typ, blob in anc:
            if (lvl, typ) == (level, kind):
                if fam == socket.AF_INET:   # in_pktinfo: ifindex, spec_dst, addr -> reply from addr
                    cmsgs.append((lvl, typ, blob[:4] + blob[8:12] + blob[8:12]))
                else:                       # in6_pktinfo: addr, ifindex
                    cmsgs.append((lvl, typ, blob[:16] + bytes(4)))
        try:
            s.sendmsg([name.encode() + b' ' + data], cmsgs, 0, peer)
        except OSError as exc:
            print('reply to %s failed: %s' % (peer, exc), file=sys.stderr, flush=True)
'''


class Server(object):
    """A tagged echo server process inside a namespace."""

    def __init__(self, ns, name, proto='tcp', host='127.0.0.1', port=0, register=None):
        self.ns = ns
        self.name = name
        self.proto = proto
        family = '6' if ':' in host else '4'
        argv = [HOST_PYTHON, '-c', SERVER, name, proto, family, host, str(port)]
        if register:
            argv += list(register)   # (pin_dir, label)
        self.proc = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, BPFSTEER_COLLECTIONS=COLLECTIONS))
        line = self.proc.stdout.readline().split()
        if not line:
            raise AssertionError('server %s did not start: %s' % (name, self.proc.stderr.read()))
        self.port, self.fd = int(line[0]), int(line[1])
        self.pid = self._inner_pid()

    def _inner_pid(self):
        # ip netns exec execs the command, so the Popen pid is the server itself.
        return self.proc.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def probe_code(proto, host, port, payload='ping', timeout=1.0):
    return '''
import socket, json
fam = socket.AF_INET6 if ':' in %(host)r else socket.AF_INET
try:
    if %(proto)r == 'tcp':
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(%(timeout)r)
        s.connect((%(host)r, %(port)d)); s.sendall(%(payload)r.encode())
        data = s.recv(1024).decode()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(%(timeout)r)
        s.connect((%(host)r, %(port)d)); s.send(%(payload)r.encode())
        data = s.recv(2048).decode()
    print(json.dumps({'reply': data}))
except ConnectionRefusedError:
    print(json.dumps({'error': 'refused'}))
except socket.timeout:
    print(json.dumps({'error': 'timeout'}))
''' % dict(proto=proto, host=host, port=port, payload=payload, timeout=timeout)


def probe(ns, proto, host, port, timeout=1.0):
    """Who answers a connection or datagram: the server's name, 'refused' or 'timeout'."""
    out = ns.python(probe_code(proto, host, port, timeout=timeout))
    if 'reply' in out:
        return out['reply'].split(' ', 1)[0]
    return out['error']


def probe_many(ns, cases, timeout=0.5):
    """probe() for a list of (proto, host, port) in one process: {case: answer}."""
    code = '''
import socket, json, sys
cases = json.loads(sys.argv[1]) if len(sys.argv) > 1 else %(cases)s
out = []
for proto, host, port in cases:
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    try:
        if proto == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(%(timeout)r)
            s.connect((host, port)); s.sendall(b'ping'); data = s.recv(1024).decode()
        else:
            # unconnected: a reply from whatever source address still identifies the server
            # Send from loopback: a source inside a port-0 binding would have the
            # reply steered back to the server instead of to us.
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(%(timeout)r)
            s.bind(('::1' if fam == socket.AF_INET6 else '127.0.0.1', 0))
            s.sendto(b'ping', (host, port)); data = s.recvfrom(2048)[0].decode()
        out.append(data.split(' ', 1)[0])
    except ConnectionRefusedError:
        out.append('refused')
    except socket.timeout:
        out.append('timeout')
    finally:
        s.close()
print(json.dumps(out))
''' % dict(cases=json.dumps([list(c) for c in cases]), timeout=timeout)
    answers = ns.python(code, timeout=60 + len(cases) * timeout * 2)
    return dict(zip([tuple(c) for c in cases], answers))


def wait_for(predicate, timeout=10.0, interval=0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def backend(code, **params):
    """Run backend code as root in /usr/bin/python3 (for state the modules do not manage yet).

    ``code`` sees ``dispatcher``, ``bindings`` and the keyword arguments as variables and
    prints JSON.
    """
    prelude = ('import sys, json\nsys.path.insert(0, %r)\n'
               'from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher, bindings\n'
               % COLLECTIONS)
    prelude += ''.join('%s = %r\n' % kv for kv in params.items())
    proc = subprocess.run([HOST_PYTHON, '-c', prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise AssertionError('backend code failed:\n%s' % proc.stderr)
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def set_bindings(pin_dir, entries):
    """Replace the bindings through the backend (label/protocol/prefix/port dicts)."""
    backend('''
with dispatcher.open_dispatcher(pin_dir) as d:
    d.replace_bindings(bindings.parse_bindings(entries))
''', pin_dir=pin_dir, entries=entries)


def pin_dir(target):
    return os.path.join(target['bpffs'], 'sk_lookup', target['instance'])


CLIENT_LOOP = r'''
import socket, sys, time, json
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
ok = refused = other = 0
seen = {}
end = time.time() + seconds
print('started', flush=True)
while time.time() < end:
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
    try:
        s.connect((host, port)); s.sendall(b'x'); who = s.recv(64).split(b' ')[0].decode()
        ok += 1; seen[who] = seen.get(who, 0) + 1
    except ConnectionRefusedError:
        refused += 1
    except OSError:
        other += 1
    finally:
        s.close()
print(json.dumps({'ok': ok, 'refused': refused, 'other': other, 'seen': seen}), flush=True)
'''


class ClientLoop(object):
    """Connect in a loop from inside a namespace for ``seconds``; count outcomes."""

    def __init__(self, ns, host, port, seconds):
        self.proc = ns.popen([HOST_PYTHON, '-c', CLIENT_LOOP, host, str(port), str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'started'

    def result(self):
        out, err = self.proc.communicate(timeout=120)
        return json.loads(out.strip().splitlines()[-1])
