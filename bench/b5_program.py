"""5. Program load: first load (compile), unchanged rerun, upgrade; compile memory.

Times are ansible-playbook wall times of one sk_lookup_program task (content:
the rendered default template) and that task's own time (results_json callback).

  first load  a fresh instance: compile with BCC, create and pin maps, load,
              attach (the instance is removed untimed before every run)
  rerun       the same source again: must not compile (checked: compiled is
              false and action is none)
  upgrade     a source that differs by a comment: compile, load, one
              BPF_LINK_UPDATE, maps kept

Peak memory of the compile is the peak RSS (wait4 ru_maxrss) of a
/usr/bin/python3 process that imports the collection's compiler and compiles
the source, the work the module does in its own process; next to it the same
process that imports everything but does not compile, and the largest process
of a whole `ansible-playbook` first load (controller, worker or module:
RUSAGE_CHILDREN of a wrapper).
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile

import common as c

COMPILE = r'''
import sys, time, resource
sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import compiler
src = open(sys.argv[2]).read()
t0 = time.perf_counter()
if sys.argv[3] == 'compile':
    compiler.compile_source(src).close()
print(time.perf_counter() - t0)
'''

WRAPPER = r'''
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
'''


def rss_of(argv):
    """Peak RSS (bytes) of argv and its stdout, measured by wait4 on the child."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError('%s exited %d' % (argv[:3], os.waitstatus_to_exitcode(status)))
    return usage.ru_maxrss * 1024


def run(quick=False):
    runs = 1 if quick else 3
    out = {'runs': runs}
    with contextlib.ExitStack() as stack:
        ns = c.namespace(stack)
        fs = c.bpffs(stack)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='bpfsteer-bench-b5-'))
        target = {'instance': 'b5', 'bpffs': fs, 'netns': ns.path}
        source = c.harness.render_dispatch()
        src_path = os.path.join(tmp, 'dispatch.c')
        with open(src_path, 'w') as f:
            f.write(source)

        # -- memory of the compile
        script = os.path.join(tmp, 'compile.py')
        with open(script, 'w') as f:
            f.write(COMPILE)
        mem = {'compile': [], 'import only': []}
        for _ in range(runs):
            mem['compile'].append(rss_of([c.harness.HOST_PYTHON, script, c.harness.COLLECTIONS, src_path, 'compile']))
            mem['import only'].append(rss_of([c.harness.HOST_PYTHON, script, c.harness.COLLECTIONS, src_path, 'x']))
        compile_s = []
        for _ in range(runs):
            proc = subprocess.run([c.harness.HOST_PYTHON, script, c.harness.COLLECTIONS, src_path, 'compile'],
                                  capture_output=True, text=True, check=True)
            compile_s.append(float(proc.stdout.split()[-1]))
        out['compile_peak_rss_bytes'] = c.median(mem['compile'])
        out['import_only_peak_rss_bytes'] = c.median(mem['import only'])
        out['compile_only_s'] = c.median(compile_s)
        c.log('program: compile alone %.2f s, peak RSS %.0f MiB (imports alone %.0f MiB)' % (
            out['compile_only_s'], out['compile_peak_rss_bytes'] / 2**20, out['import_only_peak_rss_bytes'] / 2**20))

        task = {'name': 'program', 'bpfsteer.sk_lookup.sk_lookup_program': dict(target, content=source)}
        remove = {'name': 'remove', 'bpfsteer.sk_lookup.sk_lookup_program': dict(
            instance=target['instance'], bpffs=fs, state='absent')}
        samples = {'first load': [], 'rerun': [], 'upgrade': []}
        for i in range(runs):
            c.playbook([remove])
            wall, res = c.playbook([task])
            r = res.result(0)
            assert r['action'] == 'load' and r['compiled'], r
            samples['first load'].append((wall, c.task_seconds(res, index=0)))
            wall, res = c.playbook([task])
            r = res.result(0)
            assert r['action'] == 'none' and not r['compiled'] and not r['changed'], r
            samples['rerun'].append((wall, c.task_seconds(res, index=0)))
            upgraded = {'name': 'program', 'bpfsteer.sk_lookup.sk_lookup_program': dict(
                target, content=source + '\n/* revision %d */\n' % i)}
            wall, res = c.playbook([upgraded])
            r = res.result(0)
            assert r['action'] == 'upgrade' and r['compiled'], r
            samples['upgrade'].append((wall, c.task_seconds(res, index=0)))
        out['rows'] = []
        for case, vals in samples.items():
            out['rows'].append({'case': case, 'wall_s': c.median([v[0] for v in vals]),
                                'task_s': c.median([v[1] for v in vals]),
                                'min': min(v[0] for v in vals), 'max': max(v[0] for v in vals)})
            c.log('program: %-10s wall %.2f s (task %.2f s)' % (case, out['rows'][-1]['wall_s'],
                                                                 out['rows'][-1]['task_s']))

        # -- the largest process of a whole first load through ansible-playbook
        c.playbook([remove])
        pb = os.path.join(tmp, 'load.yml')
        inv = os.path.join(tmp, 'inventory.ini')
        with open(pb, 'w') as f:
            json.dump(c.harness.play([task]), f)
        with open(inv, 'w') as f:
            f.write('localhost ansible_connection=local ansible_python_interpreter=%s\n' % c.harness.HOST_PYTHON)
        env = c.harness.ansible_env(c.BENCH_ENV)
        proc = subprocess.run([sys.executable, '-c', WRAPPER, os.path.join(c.harness.VENV_BIN, 'ansible-playbook'),
                               '-i', inv, pb], capture_output=True, text=True, env=env)
        rc, maxrss = proc.stdout.split()
        if rc != '0':
            raise RuntimeError('wrapped ansible-playbook failed: %s' % proc.stderr[-2000:])
        out['playbook_largest_process_rss_bytes'] = int(maxrss) * 1024
    return out


if __name__ == '__main__':
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
