"""sk_lookup_socket and playbooks/switch_service.yml against real processes and real traffic.

Every test loads a dispatcher into its own throwaway namespace (the ``loaded``
fixture), starts services inside that namespace and talks to them there over
loopback. The modules run in the host's namespace and reach into the test
namespace only through the dispatcher and pidfd_getfd.
"""

import json
import os
import subprocess
import textwrap
import time

import pytest

import harness

SWITCH_PLAYBOOK = os.path.join(harness.ROOT, 'playbooks', 'switch_service.yml')


# --- helpers -------------------------------------------------------------------------------------

def instance_of(target):
    return {'instance': target['instance'], 'bpffs': target['bpffs']}


def socket_task(target, name, ignore_errors=False, **args):
    task = harness.module_task('sk_lookup_socket', dict(instance_of(target), **args), name=name)
    if ignore_errors:
        task['ignore_errors'] = True
    return task


def info_task(target, name='info'):
    return harness.module_task('sk_lookup_info', instance_of(target), name=name)


def destination(info, label, family='ipv4', protocol='tcp'):
    for dest in info['destinations']:
        if (dest['label'], dest['family'], dest['protocol']) == (label, family, protocol):
            return dest
    raise AssertionError('no destination %s %s %s in %s' % (label, family, protocol, info['destinations']))


def set_bindings(target, *entries):
    """Make the bindings exactly ``entries`` ((protocol, prefix, port, label) tuples) with sk_lookup_binding."""
    rows = [dict(zip(('protocol', 'prefix', 'port', 'label'), e)) for e in entries]
    harness.run_module('sk_lookup_binding', {'instance': target['instance'], 'bpffs': target['bpffs'],
                                             'bindings': rows, 'exclusive': True})


class Proc(object):
    """A Python process inside a namespace. The first line it prints is JSON
    (its descriptors and ports); later lines are read with ``line()``."""

    def __init__(self, ns, code, *args):
        self.proc = ns.popen([harness.HOST_PYTHON, '-c', textwrap.dedent(code)] + [str(a) for a in args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.info = json.loads(self.line())

    def line(self):
        text = self.proc.stdout.readline()
        if not text:
            raise AssertionError('process %d printed nothing: %s' % (self.pid, self.proc.stderr.read()))
        return text.strip()

    def send(self, text):
        self.proc.stdin.write(text + '\n')
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def procs():
    """Start processes (``procs.server``, ``procs.python``) that are stopped after the test."""
    class Started(list):
        def server(self, *args, **kw):
            self.append(harness.Server(*args, **kw))
            return self[-1]

        def python(self, ns, code, *args):
            self.append(Proc(ns, code, *args))
            return self[-1]

    started = Started()
    yield started
    for p in started:
        p.stop()


def fake_systemctl(tmp_path, units):
    """A systemctl stand-in on PATH (systemd is not PID 1 on test machines):
    ``show -p MainPID --value -- UNIT`` prints units[UNIT]."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    cases = ''.join('  %s) echo %s ;;\n' % (unit, pid) for unit, pid in units.items())
    script = bindir / 'systemctl'
    script.write_text('#!/bin/sh\n'
                      '[ "$1 $2 $3 $4 $5" = "show -p MainPID --value --" ] || { echo "unexpected: $*" >&2; exit 2; }\n'
                      'case "$6" in\n%s'
                      '  *) echo "Unit $6 not found." >&2; exit 1 ;;\nesac\n' % cases)
    script.chmod(0o755)
    return {'PATH': '%s:%s' % (bindir, harness.ansible_env()['PATH'])}


def exchange(ns, proto, host, port, payload='ping', timeout=1.0):
    """The whole reply of one connection or datagram, or 'refused'/'timeout'."""
    out = ns.python(harness.probe_code(proto, host, port, payload=payload, timeout=timeout))
    return out.get('reply', out.get('error'))


# --- services ---------------------------------------------------------------------------------------

# A UDP service that answers from the address each request was sent to:
# it asks for the request's destination (IP_PKTINFO / IPV6_RECVPKTINFO) and
# passes it back as the source of the answer. Without this a steered
# datagram would be answered from the socket's own bound address.
PKTINFO_SERVER = r'''
import json, socket, struct, sys
name, host = sys.argv[1], sys.argv[2]
IP_PKTINFO = 8
if ':' in host:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
s.bind((host, 0))
print(json.dumps({'port': s.getsockname()[1], 'fd': s.fileno()}), flush=True)
while True:
    data, anc, _flags, peer = s.recvmsg(2048, 256)
    reply = []
    for level, kind, value in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            _ifindex, _spec_dst, dst = struct.unpack('=i4s4s', value[:12])
            reply.append((level, kind, struct.pack('=i4s4s', 0, dst, bytes(4))))
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            dst, _ifindex = struct.unpack('=16si', value[:20])
            reply.append((level, kind, struct.pack('=16si', dst, 0)))
    s.sendmsg([name.encode() + b' ' + data], reply, 0, peer)
'''

# A UDP service that just answers with sendto(): from its bound address.
NAIVE_UDP_SERVER = r'''
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', 0))
print(json.dumps({'port': s.getsockname()[1], 'fd': s.fileno()}), flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode() + b' ' + data, peer)
'''

# Sends one datagram per target twice: from a connected socket (which drops
# answers from any other source) and from an unconnected one (which reports
# the answer's source).
UDP_CLIENT = r'''
import json, socket, sys
out = []
for host, port in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    entry = {}
    c = socket.socket(fam, socket.SOCK_DGRAM); c.settimeout(1)
    c.connect((host, port)); c.send(b'ping')
    try:
        entry['connected'] = c.recv(2048).decode()
    except socket.timeout:
        entry['connected'] = 'timeout'
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(1)
    u.sendto(b'ping', (host, port))
    try:
        data, source = u.recvfrom(2048)
        entry['unconnected'] = [data.decode(), source[0], source[1]]
    except socket.timeout:
        entry['unconnected'] = 'timeout'
    out.append(entry)
print(json.dumps(out))
'''

# Connects over and over until a stop file appears; counts who answered.
LOOP_CLIENT = r'''
import json, os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, order = {}, []
while not os.path.exists(stop):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.sendall(b'ping')
        tag = s.recv(1024).decode().split(' ', 1)[0] or 'closed'
    except ConnectionRefusedError:
        tag = 'refused'
    except socket.timeout:
        tag = 'timeout'
    except OSError as exc:
        tag = 'error %s' % exc.errno
    finally:
        s.close()
    counts[tag] = counts.get(tag, 0) + 1
    if not order:
        print(json.dumps({'started': tag}), flush=True)
    if not order or order[-1] != tag:
        order.append(tag)
    time.sleep(0.002)
print(json.dumps({'counts': counts, 'order': order}), flush=True)
'''

# Opens a connection now and uses it only when told to.
HOLD_CLIENT = r'''
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(json.dumps({'local_port': s.getsockname()[1]}), flush=True)
sys.stdin.readline()
s.sendall(b'late')
print(s.recv(1024).decode(), flush=True)
'''

# Several SO_REUSEPORT listeners on one port; each answers with its own fd.
REUSEPORT_SERVER = r'''
import json, socket, threading
socks = []
for _ in range(3):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(('127.0.0.1', socks[0].getsockname()[1] if socks else 0))
    s.listen(64)
    socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept()
        c.recv(1024)
        c.sendall(b'R%d' % s.fileno())
        c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print(json.dumps({'port': socks[0].getsockname()[1], 'fds': [s.fileno() for s in socks]}), flush=True)
threading.Event().wait()
'''

# A process holding every kind of socket the module must refuse.
ZOO = r'''
import json, socket, time
keep, out = [], {}
def tcp(host='127.0.0.1', port=0, listen=True):
    s = socket.socket()
    s.bind((host, port))
    if listen:
        s.listen()
    keep.append(s)
    return s
def udp(host='127.0.0.1', port=0, shared=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if shared:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    keep.append(s)
    return s
listener = tcp()
out['listen'], out['listen_port'] = listener.fileno(), listener.getsockname()[1]
connected = udp()
connected.connect(('127.0.0.1', 9))
out['udp_connected'] = connected.fileno()
out['tcp_bound'] = tcp(listen=False).fileno()
client = socket.create_connection(('127.0.0.1', out['listen_port']))
keep.append(client)
keep.append(listener.accept()[0])
out['client_port'] = client.getsockname()[1]
pair = socket.socketpair()
keep.extend(pair)
out['unix'] = pair[0].fileno()
devnull = open('/dev/null')
keep.append(devnull)
out['file'] = devnull.fileno()
one = tcp('127.0.0.1')
out['split_port'] = one.getsockname()[1]
tcp('127.0.0.2', out['split_port'])
first = udp(shared=True)
out['shared_udp_port'] = first.getsockname()[1]
udp(port=out['shared_udp_port'], shared=True)
print(json.dumps(out), flush=True)
while True:
    time.sleep(60)
'''


# --- tests -------------------------------------------------------------------------------------------

def test_register_by_fd_match_pidfile_and_unit(loaded, ns, procs, tmp_path):
    by_fd = procs.server(ns, 'by-fd', 'tcp', '127.0.0.1')
    by_match = procs.server(ns, 'by-match', 'tcp', '127.0.0.1')
    by_pidfile = procs.server(ns, 'by-pidfile', 'tcp', '127.0.0.1')
    by_unit = procs.server(ns, 'by-unit', 'tcp', '::1')
    pidfile = tmp_path / 'service.pid'
    pidfile.write_text('%d\n' % by_pidfile.pid)
    env = fake_systemctl(tmp_path, {'green.service': by_unit.pid})
    set_bindings(loaded, ('tcp', '127.0.0.1/32', 1001, 'one'), ('tcp', '127.0.0.1/32', 1002, 'two'),
                 ('tcp', '127.0.0.1/32', 1003, 'three'), ('tcp', '::1/128', 1004, 'four'))

    res = harness.run_playbook(harness.play([
        socket_task(loaded, 'fd', label='one', pid=by_fd.pid, fd=by_fd.fd),
        socket_task(loaded, 'match', label='two', pid=by_match.pid, protocol='tcp', address='127.0.0.1',
                    port=by_match.port),
        socket_task(loaded, 'pidfile', label='three', pidfile=str(pidfile), protocol='tcp', port=by_pidfile.port),
        socket_task(loaded, 'unit', label='four', systemd_unit='green.service', protocol='tcp', port=by_unit.port),
        info_task(loaded),
    ]), env=env, expect_rc=0)

    for name, server, label, family, address in (
            ('fd', by_fd, 'one', 'ipv4', '127.0.0.1'), ('match', by_match, 'two', 'ipv4', '127.0.0.1'),
            ('pidfile', by_pidfile, 'three', 'ipv4', '127.0.0.1'), ('unit', by_unit, 'four', 'ipv6', '::1')):
        out = res.by_name(name)
        assert out['changed'], out
        sock = out['socket']
        assert (sock['pid'], sock['fd'], sock['command']) == (server.pid, server.fd, 'python3')
        assert (sock['family'], sock['protocol'], sock['address'], sock['port']) == (family, 'tcp', address,
                                                                                     server.port)
        assert out['destination'] == {'label': label, 'family': family, 'protocol': 'tcp',
                                      'id': out['destination']['id']}
        assert destination(res.by_name('info'), label, family)['socket_cookie'] == sock['cookie']

    answers = harness.probe_many(ns, [('tcp', '127.0.0.1', 1001), ('tcp', '127.0.0.1', 1002),
                                      ('tcp', '127.0.0.1', 1003), ('tcp', '::1', 1004), ('tcp', '127.0.0.1', 1005)])
    assert list(answers.values()) == ['by-fd', 'by-match', 'by-pidfile', 'by-unit', 'refused']
    assert exchange(ns, 'tcp', '127.0.0.1', 1002, payload='hello') == 'by-match hello'


def test_seed_demo_one_socket_serves_7_77_777(loaded, ns, procs):
    procs.server(ns, 'echo', 'tcp', '127.0.0.1', 7777)
    set_bindings(loaded, *[('tcp', '127.0.0.1/32', port, 'echo') for port in (7, 77, 777)])
    out = harness.run_module('sk_lookup_socket', dict(instance_of(loaded), label='echo', pid=procs[0].pid,
                                                      protocol='tcp', address='127.0.0.1', port=7777))
    assert out['changed'] and out['socket']['port'] == 7777

    scan = ns.python('''
        import json, socket
        found = {}
        for port in range(1, 1001):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect(('127.0.0.1', port))
                s.sendall(b'hello %d' % port)
                found[port] = s.recv(1024).decode()
            except (ConnectionRefusedError, socket.timeout):
                pass
            finally:
                s.close()
        print(json.dumps(found))
    ''')
    assert scan == {'7': 'echo hello 7', '77': 'echo hello 77', '777': 'echo hello 777'}


def test_switch_service_playbook_refuses_nothing(loaded, ns, procs, tmp_path):
    a = procs.server(ns, 'A', 'tcp', '127.0.0.1')
    b = procs.server(ns, 'B', 'tcp', '127.0.0.1')
    set_bindings(loaded, ('tcp', '127.0.0.1/32', 8080, 'web'))
    first = harness.run_module('sk_lookup_socket', dict(instance_of(loaded), label='web', pid=a.pid, fd=a.fd))
    held = procs.python(ns, HOLD_CLIENT, '127.0.0.1', 8080)
    stop = tmp_path / 'stop'
    loop = procs.python(ns, LOOP_CLIENT, '127.0.0.1', 8080, stop)
    assert loop.info == {'started': 'A'}

    switch_vars = dict(instance_of(loaded), label='web', pid=b.pid, protocol='tcp', address='127.0.0.1',
                       port=b.port, verify_port=8080, verify_netns=ns.path)
    dry = harness.run_playbook(SWITCH_PLAYBOOK, extra_vars=switch_vars, check=True, expect_rc=0)
    planned = dry.by_name('Register the new process\'s socket for the label')
    assert planned['changed'] and planned['socket']['pid'] == b.pid
    assert dry.by_name('Report the switch')['msg'].endswith('-> socket %d of pid %d (python3) on 127.0.0.1:%d'
                                                            % (planned['socket']['cookie'], b.pid, b.port))
    res = harness.run_playbook(SWITCH_PLAYBOOK, extra_vars=switch_vars)
    time.sleep(0.3)
    stop.write_text('')
    traffic = json.loads(loop.line())

    assert res.rc == 0, [r.get('msg') for r in res.results]
    switched = res.by_name('Register the new process\'s socket for the label')
    assert switched['changed'] and switched['socket']['pid'] == b.pid
    assert switched['previous_socket']['cookie'] == first['socket']['cookie']
    assert switched['previous_socket']['pid'] == a.pid
    assert not res.by_name('Check that the dispatcher sent the connection to the new socket').get('failed')
    report = res.by_name('Report the switch')['msg']
    assert 'of pid %d (python3) on 127.0.0.1:%d -> socket %d of pid %d' % (
        a.pid, a.port, switched['socket']['cookie'], b.pid) in report

    # Nothing moved during the check run, then everything moved at once.
    assert traffic['order'] == ['A', 'B'], traffic
    assert traffic['counts']['A'] > 0 and traffic['counts']['B'] > 0
    held.send('go')
    assert held.line() == 'A late'
    assert harness.probe(ns, 'tcp', '127.0.0.1', 8080) == 'B'


def test_switch_service_playbook_catches_a_label_without_binding(loaded, ns, procs):
    server = procs.server(ns, 'C', 'tcp', '127.0.0.1')
    res = harness.run_playbook(SWITCH_PLAYBOOK, extra_vars=dict(
        instance_of(loaded), label='web', pid=server.pid, fd=server.fd, verify_port=8080, verify_netns=ns.path))
    assert res.rc != 0
    assert res.by_name('Register the new process\'s socket for the label')['changed']
    verify = res.by_name('Connect from the dispatcher\'s namespace')
    assert verify.get('failed'), verify


def test_udp_answers_from_the_original_destination(loaded, ns, procs):
    ns.add_address('fd00::53/128')
    dns4 = procs.python(ns, PKTINFO_SERVER, 'dns4', '127.0.0.1')
    dns6 = procs.python(ns, PKTINFO_SERVER, 'dns6', '::1')
    port4, port6 = dns4.info['port'], dns6.info['port']
    # A service bound exactly to the steered address: steering must win over it.
    procs.server(ns, 'decoy', 'udp', '127.0.0.53', port4)
    naive = procs.python(ns, NAIVE_UDP_SERVER, 'naive')
    set_bindings(loaded, ('udp', '127.0.0.53/32', port4, 'dns'), ('udp', 'fd00::53/128', port6, 'dns'),
                 ('udp', '127.0.0.54/32', naive.info['port'], 'naive'))

    res = harness.run_playbook(harness.play([
        socket_task(loaded, 'dns4', label='dns', pid=dns4.pid, protocol='udp', address='127.0.0.1', port=port4),
        socket_task(loaded, 'dns6', label='dns', pid=dns6.pid, protocol='udp', port=port6),
        socket_task(loaded, 'naive', label='naive', pid=naive.pid, fd=naive.info['fd']),
        info_task(loaded),
    ]), expect_rc=0)
    info = res.by_name('info')
    assert destination(info, 'dns', 'ipv4', 'udp')['socket_cookie'] == res.by_name('dns4')['socket']['cookie']
    assert destination(info, 'dns', 'ipv6', 'udp')['socket_cookie'] == res.by_name('dns6')['socket']['cookie']
    assert res.by_name('dns6')['socket']['address'] == '::1'

    answers = ns.python('import sys; sys.argv[1:] = [%r]\n%s' % (
        json.dumps([['127.0.0.53', port4], ['fd00::53', port6], ['127.0.0.54', naive.info['port']]]), UDP_CLIENT))
    assert answers[0] == {'connected': 'dns4 ping', 'unconnected': ['dns4 ping', '127.0.0.53', port4]}
    assert answers[1] == {'connected': 'dns6 ping', 'unconnected': ['dns6 ping', 'fd00::53', port6]}
    # A service that ignores the destination answers from its bound address,
    # which a connected client drops: what the checks above would catch.
    assert answers[2] == {'connected': 'timeout', 'unconnected': ['naive ping', '127.0.0.1', naive.info['port']]}


def test_process_exit_removes_the_socket(loaded, ns, procs):
    tcp = procs.server(ns, 'T', 'tcp', '127.0.0.1')
    udp = procs.server(ns, 'U', 'udp', '127.0.0.1')
    # Ordinary services on the steered port: they get nothing while the label
    # has a socket, and nothing after it lost it (missing_socket=drop).
    procs.server(ns, 'decoy', 'tcp', '127.0.0.1', 9000)
    procs.server(ns, 'decoy', 'udp', '127.0.0.1', 9000)
    set_bindings(loaded, ('tcp', '127.0.0.1/32', 9000, 'svc'), ('udp', '127.0.0.1/32', 9000, 'svc'))
    res = harness.run_playbook(harness.play([
        socket_task(loaded, 'tcp', label='svc', pid=tcp.pid, fd=tcp.fd),
        socket_task(loaded, 'udp', label='svc', pid=udp.pid, fd=udp.fd),
    ]), expect_rc=0)
    assert [r['changed'] for r in res.results] == [True, True]
    cases = [('tcp', '127.0.0.1', 9000), ('udp', '127.0.0.1', 9000)]
    assert list(harness.probe_many(ns, cases).values()) == ['T', 'U']

    tcp.stop()
    udp.stop()
    # The program drops the lookup. For TCP the kernel then has no socket for
    # the SYN and answers with a reset, so the client sees "refused" at once;
    # the datagram is dropped, so the UDP client times out.
    assert list(harness.probe_many(ns, cases, timeout=0.5).values()) == ['refused', 'timeout']
    info = harness.run_module('sk_lookup_info', instance_of(loaded))
    for proto in ('tcp', 'udp'):
        dest = destination(info, 'svc', 'ipv4', proto)
        assert dest['socket_cookie'] is None, dest
        assert dest['misses'] >= 1, dest


def test_reuseport_group_registers_lowest_fd_and_still_balances(loaded, ns, procs):
    group = procs.python(ns, REUSEPORT_SERVER)
    set_bindings(loaded, ('tcp', '127.0.0.1/32', 8443, 'group'))
    out = harness.run_module('sk_lookup_socket', dict(instance_of(loaded), label='group', pid=group.pid,
                                                      protocol='tcp', port=group.info['port']))
    assert out['changed']
    assert out['socket']['fd'] == min(group.info['fds']) and out['socket']['reuseport']
    answers = ns.python('''
        import json, socket
        out = []
        for _ in range(40):
            s = socket.create_connection(('127.0.0.1', 8443), timeout=2)
            s.sendall(b'x')
            out.append(s.recv(64).decode())
            s.close()
        print(json.dumps(out))
    ''')
    # The kernel picks a group member per connection by hash of the addresses
    # and ports: 40 connections reach more than one member.
    assert set(answers) <= set('R%d' % fd for fd in group.info['fds']) and len(set(answers)) > 1, answers


def test_refusals_name_the_reason_and_change_nothing(loaded, ns, procs, tmp_path):
    zoo = procs.python(ns, ZOO)
    z = zoo.info
    far_ns = harness.Namespace()
    try:
        far = harness.Server(far_ns, 'far', 'tcp', '127.0.0.1')
        try:
            gone = subprocess.Popen(['true'])
            gone.wait()
            assert not os.path.exists('/proc/%d' % gone.pid)
            env = fake_systemctl(tmp_path, {'stopped.service': 0})
            cases = [
                # (task name, module args, expected text in msg)
                ('connected udp', dict(pid=zoo.pid, fd=z['udp_connected']),
                 'socket %d of pid %d (python3) is a connected UDP socket (udp 127.0.0.1:'
                 % (z['udp_connected'], zoo.pid)),
                ('tcp not listening', dict(pid=zoo.pid, fd=z['tcp_bound']),
                 'socket %d of pid %d (python3) is a TCP socket that is not listening (tcp 127.0.0.1:'
                 % (z['tcp_bound'], zoo.pid)),
                ('tcp connection by match', dict(pid=zoo.pid, protocol='tcp', port=z['client_port']),
                 'no usable socket: pid %d (python3) has a matching socket but socket' % zoo.pid),
                ('wrong protocol', dict(pid=zoo.pid, fd=z['listen'], protocol='udp'),
                 'socket %d of pid %d (python3) is a TCP socket (tcp 127.0.0.1:%d listening), not udp as asked'
                 % (z['listen'], zoo.pid, z['listen_port'])),
                ('wrong family', dict(pid=zoo.pid, fd=z['listen'], family='ipv6'),
                 'is an ipv4 socket (tcp 127.0.0.1:%d listening), not ipv6 as asked' % z['listen_port']),
                ('wrong address', dict(pid=zoo.pid, fd=z['listen'], address='0.0.0.0'),
                 'is bound to 127.0.0.1:%d, not to 0.0.0.0 as asked' % z['listen_port']),
                ('unix socket', dict(pid=zoo.pid, fd=z['unix']), 'is not an internet socket but a unix socket'),
                ('not a socket', dict(pid=zoo.pid, fd=z['file']),
                 'descriptor %d of pid %d (python3) is not a socket but /dev/null' % (z['file'], zoo.pid)),
                ('no such descriptor', dict(pid=zoo.pid, fd=999), 'pid %d (python3) has no descriptor 999' % zoo.pid),
                ('other namespace by fd', dict(pid=far.pid, fd=far.fd),
                 'socket %d of pid %d (python3) is in network namespace inode %d, but the dispatcher is attached '
                 'to network namespace inode %d' % (far.fd, far.pid, os.stat(far_ns.path).st_ino,
                                                    os.stat(ns.path).st_ino)),
                ('other namespace by match', dict(pid=far.pid, protocol='tcp', port=far.port),
                 'wrong network namespace: in pid %d (python3), socket %d (tcp 127.0.0.1:%d listening) is in '
                 'network namespace inode' % (far.pid, far.fd, far.port)),
                ('no such pid', dict(pid=gone.pid, protocol='tcp', port=80), 'no such process: pid %d' % gone.pid),
                ('no matching socket', dict(pid=zoo.pid, protocol='tcp', port=1),
                 'no matching socket: pid %d (python3) has no tcp *:1 socket; its internet sockets are: socket %d: '
                 'tcp 127.0.0.1:%d listening' % (zoo.pid, z['listen'], z['listen_port'])),
                ('several tcp', dict(pid=zoo.pid, protocol='tcp', port=z['split_port']),
                 'several sockets match tcp *:%d in pid %d (python3) and they are not one SO_REUSEPORT group: '
                 'socket' % (z['split_port'], zoo.pid)),
                ('several udp', dict(pid=zoo.pid, protocol='udp', address='127.0.0.1', port=z['shared_udp_port']),
                 'several sockets match udp 127.0.0.1:%d in pid %d (python3) and they are not one SO_REUSEPORT '
                 'group: socket' % (z['shared_udp_port'], zoo.pid)),
                ('unit not running', dict(systemd_unit='stopped.service', protocol='tcp', port=80),
                 'systemd unit stopped.service has no main process (MainPID is 0): is it running?'),
                ('missing pidfile', dict(pidfile=str(tmp_path / 'none.pid'), protocol='tcp', port=80),
                 'cannot read pidfile %s: No such file or directory' % (tmp_path / 'none.pid')),
                ('not loaded', dict(pid=zoo.pid, fd=z['listen'], instance='other'),
                 'no dispatcher is loaded at %s/sk_lookup/other' % loaded['bpffs']),
                ('bad label', dict(pid=zoo.pid, fd=z['listen'], label='two words'),
                 "label 'two words' may only contain printable ASCII characters without spaces"),
                ('two sources', dict(pid=zoo.pid, pidfile='/run/x.pid', fd=z['listen']),
                 'parameters are mutually exclusive: pid|pidfile|systemd_unit'),
                ('no source', dict(fd=z['listen']), 'state is present but any of the following are missing'),
                ('protocol missing', dict(pid=zoo.pid, port=80), 'name the socket by fd, or by protocol and port'),
                ('bad address', dict(pid=zoo.pid, protocol='tcp', port=80, address='not-an-ip'),
                 "address 'not-an-ip' is not an IPv4 or IPv6 address"),
                ('bad port', dict(pid=zoo.pid, protocol='tcp', port=70000), 'port must be 1..65535'),
                ('bad pid', dict(pid=0, protocol='tcp', port=80), 'pid must be a positive process id, got 0'),
                ('absent with pid', dict(pid=zoo.pid, state='absent'),
                 'state=absent takes label and optionally family and protocol, not pid'),
            ]
            tasks = []
            for name, args, _expected in cases:
                args = dict(args)
                args.setdefault('label', 'svc')
                tasks.append(socket_task(loaded, name, ignore_errors=True, **args))
            tasks.append(info_task(loaded))
            res = harness.run_playbook(harness.play(tasks), env=env)
        finally:
            far.stop()
    finally:
        far_ns.delete()

    problems = []
    for name, _args, expected in cases:
        out = res.by_name(name)
        if not out.get('failed') or expected not in out.get('msg', ''):
            problems.append('%s: expected a failure with %r, got %r' % (name, expected, out.get('msg', out)))
    assert not problems, '\n'.join(problems)
    assert res.by_name('info')['destinations'] == []


def test_check_mode_idempotence_and_diff(loaded, ns, procs):
    server = procs.server(ns, 'S', 'tcp', '127.0.0.1')
    set_bindings(loaded, ('tcp', '127.0.0.1/32', 7, 'echo'))
    register = dict(label='echo', pid=server.pid, protocol='tcp', port=server.port)
    res = harness.run_playbook(harness.play([
        dict(socket_task(loaded, 'check', **register), check_mode=True, diff=True),
        info_task(loaded, 'after check'),
        dict(socket_task(loaded, 'real', **register), diff=True),
        socket_task(loaded, 'repeat', **register),
        dict(socket_task(loaded, 'repeat in check mode', **register), check_mode=True),
        info_task(loaded, 'registered'),
        dict(socket_task(loaded, 'absent check', label='echo', state='absent'), check_mode=True, diff=True),
        info_task(loaded, 'after absent check'),
        dict(socket_task(loaded, 'absent', label='echo', protocol='tcp', family='ipv4', state='absent'), diff=True),
        socket_task(loaded, 'absent repeat', label='echo', state='absent'),
        info_task(loaded, 'after absent'),
    ]), expect_rc=0)
    r = res.by_name
    cookie = r('real')['socket']['cookie']
    owner = {'socket_cookie': cookie, 'address': '127.0.0.1', 'port': server.port, 'pid': server.pid,
             'command': 'python3'}
    empty = {'socket_cookie': None, 'address': None, 'port': None, 'pid': None, 'command': None}
    dest = {'label': 'echo', 'family': 'ipv4', 'protocol': 'tcp'}

    assert r('check')['changed'] and r('check')['socket']['cookie'] == cookie
    assert r('check')['diff']['before'] == dict(dest, **empty)
    assert r('check')['diff']['after'] == dict(dest, **owner)
    assert destination(r('after check'), 'echo')['socket_cookie'] is None
    assert r('real')['changed']
    assert (r('real')['diff']['before'], r('real')['diff']['after']) == (dict(dest, **empty), dict(dest, **owner))
    assert r('repeat')['changed'] is False and r('repeat')['previous_socket']['cookie'] == cookie
    assert r('repeat in check mode')['changed'] is False
    assert destination(r('registered'), 'echo')['socket_cookie'] == cookie

    assert r('absent check')['changed']
    assert r('absent check')['removed'] == [dict(dest, **owner)]
    assert r('absent check')['diff']['before'] == [dict(dest, **owner)]
    assert r('absent check')['diff']['after'] == [dict(dest, **empty)]
    assert destination(r('after absent check'), 'echo')['socket_cookie'] == cookie
    # The binding still uses the destination, so it stays, without a socket.
    assert r('absent')['changed'] and r('absent')['dropped_destinations'] == []
    assert r('absent repeat')['changed'] is False
    assert destination(r('after absent'), 'echo')['socket_cookie'] is None


def test_absent_forgets_a_destination_no_binding_uses(loaded, ns, procs):
    server = procs.server(ns, 'S', 'udp', '127.0.0.1')
    other = procs.server(ns, 'O', 'udp', '127.0.0.1')
    res = harness.run_playbook(harness.play([
        socket_task(loaded, 'register', label='lonely', pid=server.pid, fd=server.fd),
        socket_task(loaded, 'register other', label='other', pid=other.pid, fd=other.fd),
        socket_task(loaded, 'absent', label='lonely', state='absent'),
        info_task(loaded),
    ]), expect_rc=0)
    assert res.by_name('absent')['dropped_destinations'] == [{'label': 'lonely', 'family': 'ipv4',
                                                              'protocol': 'udp'}]
    assert [d['label'] for d in res.by_name('info')['destinations']] == ['other']


# Permission errors cannot be provoked through the module, which insists on
# root; call the backend as an unprivileged user instead.
NOBODY = r'''
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd
try:
    with sd.Process(int(sys.argv[2])) as proc:
        proc.dup(int(sys.argv[3]))
except sd.SocketError as exc:
    print(exc)
'''


def test_permission_denied_without_ptrace_access(ns, procs):
    server = procs.server(ns, 'S', 'tcp', '127.0.0.1')
    proc = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', harness.HOST_PYTHON,
                           '-B', '-c', NOBODY, harness.COLLECTIONS, str(server.pid), str(server.fd)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout.startswith('permission denied: cannot take descriptor %d of pid %d (python3): taking its '
                                  'descriptors needs ptrace access' % (server.fd, server.pid)), proc
