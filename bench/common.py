"""Shared pieces of the benchmarks: scratch namespaces and bpffs mounts that are
always removed, memory cgroups, statistics, timing and the Ansible entry points.

Every benchmark builds what it measures inside network namespaces it creates
itself and a bpffs it mounts itself, so the machine's own namespace and its
/sys/fs/bpf are never touched. Everything is registered on a Cleanup stack
that runs on success, on exceptions and on SIGTERM/SIGINT.
"""

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
import harness  # noqa: E402  (namespaces, run_playbook, render_dispatch)

sys.path.insert(0, harness.COLLECTIONS)
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bpf_syscalls as bpf  # noqa: E402
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd  # noqa: E402,F401
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as dsp  # noqa: E402

BUILD = os.path.join(BENCH, '.build')          # compiled load generator
LOADGEN = os.path.join(BUILD, 'loadgen')
NS_PREFIX = 'bpfsteer-bench'
CGROUP_V1_MEMORY = '/sys/fs/cgroup/memory'


def log(*args):
    print('[%s]' % time.strftime('%H:%M:%S'), *args, file=sys.stderr, flush=True)


# --- cleanup ----------------------------------------------------------------

class Interrupted(BaseException):
    pass


def _raise_interrupted(signum, _frame):
    raise Interrupted('signal %d' % signum)


def install_signal_handlers():
    """SIGTERM/SIGINT unwind the stack, so every finally and Cleanup runs."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)


class Namespace(harness.Namespace):
    """A throwaway netns named bpfsteer-bench-*; its processes are killed on delete."""

    def __init__(self, prefix=NS_PREFIX):
        super().__init__(prefix)

    def sysctl(self, key, value):
        self.run(['sysctl', '-q', '-w', '%s=%s' % (key, value)], check=True)

    def sh(self, *argv, check=True):
        proc = self.run(list(argv))
        if check and proc.returncode != 0:
            raise RuntimeError('%s failed in %s: %s' % (' '.join(argv), self.name, proc.stderr.strip()))
        return proc.stdout


def namespace(stack, prefix=NS_PREFIX):
    ns = Namespace(prefix)
    stack.callback(ns.delete)
    return ns


class BpfFs(object):
    """A private bpffs mount in a temp dir; unmounted and removed afterwards."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix='bpfsteer-bench-bpffs-')
        self.path = os.path.join(self.tmp, 'bpf')
        os.mkdir(self.path)
        subprocess.run(['mount', '-t', 'bpf', 'bpf', self.path], check=True)

    def close(self):
        if os.path.ismount(self.path):
            subprocess.run(['umount', self.path], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def bpffs(stack):
    fs = BpfFs()
    stack.callback(fs.close)
    return fs.path


def start(stack, popen):
    """Own a process: killed (and reaped) when the stack unwinds."""
    def stop():
        if popen.poll() is None:
            popen.kill()
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    stack.callback(stop)
    return popen


def stale_namespaces():
    out = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX + '-')]


# --- memory cgroup (v1 on this machine; v2 when that is what is mounted) -------

class MemCgroup(object):
    """A memory cgroup for one experiment. Socket and file objects are charged
    to it (SLAB_ACCOUNT), so usage covers the kernel memory of the sockets a
    process opens there, not only its user-space pages."""

    def __init__(self, name):
        self.v2 = os.path.exists('/sys/fs/cgroup/cgroup.controllers')
        base = '/sys/fs/cgroup' if self.v2 else CGROUP_V1_MEMORY
        self.path = os.path.join(base, '%s-%s-%s' % (NS_PREFIX, name, uuid.uuid4().hex[:6]))
        os.mkdir(self.path)

    def add(self, pid):
        with open(os.path.join(self.path, 'cgroup.procs'), 'w') as f:
            f.write(str(pid))

    def _read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return int(f.read().split()[0])

    def usage(self):
        return self._read('memory.current' if self.v2 else 'memory.usage_in_bytes')

    def peak(self):
        return self._read('memory.peak' if self.v2 else 'memory.max_usage_in_bytes')

    def close(self):
        # processes must be gone; leftover page cache charge is moved to the parent on rmdir
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def memcg(stack, name):
    cg = MemCgroup(name)
    stack.callback(cg.close)
    return cg


def cgroup_exec_prefix(cg):
    """argv prefix that runs a command inside the cgroup (the shell joins it, then execs)."""
    return ['sh', '-c', 'echo $$ > %s/cgroup.procs && exec "$@"' % cg.path, 'cgexec']


# --- statistics -------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def spread(values):
    """(min, max) as a noise indicator next to a median."""
    return (min(values), max(values)) if values else (None, None)


@contextlib.contextmanager
def stopwatch():
    box = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box['s'] = time.perf_counter() - t0


# --- Ansible ----------------------------------------------------------------

# Our stdout callback: the test harness's JSON plus per-task durations.
BENCH_ENV = {
    'ANSIBLE_STDOUT_CALLBACK': 'results_json',
    'ANSIBLE_CALLBACK_PLUGINS': os.path.join(ROOT, 'tests', 'integration', 'callback_plugins'),
}


def task_seconds(res, name=None, index=None):
    """Duration of one task (start to last host's result) from the results_json callback."""
    tasks = res.tasks
    task = tasks[index] if index is not None else next(t for t in tasks if t['task']['name'] == name)
    return task['task'].get('seconds')

def playbook(tasks, inventory=None, hosts='localhost', extra_vars=None, check=False, args=(), env=None,
             timeout=3600):
    """Run one play through ansible-playbook; returns (wall seconds, PlaybookResult).

    The wall time is what an operator waits for: controller start-up,
    templating, module transfer and the module itself.
    """
    plays = tasks if isinstance(tasks, str) or (tasks and 'hosts' in tasks[0]) else harness.play(tasks, hosts=hosts)
    env = dict(BENCH_ENV, **(env or {}))
    t0 = time.perf_counter()
    res = harness.run_playbook(plays, extra_vars=extra_vars, check=check, inventory=inventory, args=args,
                               env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    for task in res.tasks:
        for host, out in task['hosts'].items():
            if out.get('failed') or out.get('unreachable'):
                raise RuntimeError('task %r failed on %s: %s %s' % (
                    task['task']['name'], host, out.get('msg'),
                    (out.get('module_stderr', '') + out.get('module_stdout', ''))[-2000:]))
    if res.rc != 0:
        raise RuntimeError('ansible-playbook exited %d: %s' % (res.rc, res.stderr[-2000:]))
    return wall, res


def module(name, args, **kw):
    """One module call; (wall seconds, result dict)."""
    wall, res = playbook([harness.module_task(name, args)], **kw)
    return wall, res.result(0)


def load_program(target, source=None):
    """Load the dispatch program into target (instance, bpffs, netns) with the module."""
    source = source if source is not None else harness.render_dispatch()
    wall, out = module('sk_lookup_program', dict(target, content=source))
    return wall, out


def pin_dir(target):
    return harness.pin_dir(target)


def prog_fd_of(pin):
    """An fd of the program the pinned link runs (link -> prog id -> fd)."""
    with dsp.open_dispatcher(pin) as d:
        prog_id = d.program()['id']
    return bpf.prog_get_fd_by_id(prog_id)


# --- machine ----------------------------------------------------------------

def _first(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def _dpkg_version(pkg):
    return _first(['dpkg-query', '-W', '-f=${Version}', pkg])


def machine():
    model = None
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as f:
        mem_kb = int(re.search(r'MemTotal:\s+(\d+)', f.read()).group(1))
    ansible = _first([os.path.join(harness.VENV_BIN, 'ansible'), '--version'])
    return {
        'date': time.strftime('%Y-%m-%d %H:%M %Z'),
        'cpus': os.cpu_count(),
        'cpu_model': model,
        'memory_gib': round(mem_kb / 1024.0 / 1024.0, 1),
        'kernel': platform.release(),
        'kernel_version': platform.version(),
        'os': _first(['sh', '-c', '. /etc/os-release; echo "$PRETTY_NAME"']),
        'python': platform.python_version(),
        'ansible_core': ansible.split('[core ')[-1].rstrip(']') if ansible else None,
        'bcc': _dpkg_version('python3-bpfcc'),
        'libbpf': _dpkg_version('libbpf1'),
        'nftables': _dpkg_version('nftables'),
        'gcc': _first(['gcc', '-dumpfullversion']),
        'loadavg': open('/proc/loadavg').read().split()[:3],
    }


# --- addresses --------------------------------------------------------------

def ip4_u32(addr):
    """An IPv4 address as the kernel's network-byte-order u32 (as ctx->local_ip4)."""
    return struct.unpack('=I', socket.inet_aton(addr))[0]


def ip6_words(addr):
    return struct.unpack('=4I', socket.inet_pton(socket.AF_INET6, addr))


def dump_json(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
