"""1b. A proposed fix for the lookup cost, measured against the current program.

bench/flat_dispatch.c replaces the two LPM-trie walks of dispatch.c.j2 with
exact-match hash lookups, one per prefix length in use (longest first, real
port then port 0; same precedence). Both programs are compiled in the same run
(the current one from the rendered template), filled with the same binding
sets as benchmark 1, given the same registered sockets, and timed with
BPF_PROG_TEST_RUN on the same lookups, interleaved; the ratio is per round.

The runner (bench/flat_runner.py) runs under /usr/bin/python3, where BCC is,
inside a namespace of its own; the programs are loaded but attached nowhere.
"""

import contextlib
import json
import os
import tempfile

import common as c

SIZES = [1, 1000, 100000, 1000000]


def run(quick=False):
    sizes = [1, 1000] if quick else SIZES
    cfg = {'collections': c.harness.COLLECTIONS, 'sizes': sizes, 'repeat': 100000 if quick else 1000000,
           'runs': 3 if quick else 5, 'flat_source': os.path.join(c.BENCH, 'flat_dispatch.c')}
    with contextlib.ExitStack() as stack:
        ns = c.namespace(stack)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='bpfsteer-bench-b1b-'))
        cfg['lpm_source'] = os.path.join(tmp, 'dispatch.c')
        with open(cfg['lpm_source'], 'w') as f:
            f.write(c.harness.render_dispatch())
        c.log('flat: compiling both programs, %s bindings' % sizes)
        proc = ns.run([c.harness.HOST_PYTHON, os.path.join(c.BENCH, 'flat_runner.py'), json.dumps(cfg)],
                      timeout=1800, cwd=c.BENCH, env=dict(os.environ, PYTHONPATH=c.BENCH))
        if proc.returncode != 0:
            raise RuntimeError('flat_runner failed: %s' % proc.stderr[-3000:])
        out = json.loads(proc.stdout)
    out.update(repeat=cfg['repeat'], runs=cfg['runs'], sizes=sizes)
    for size in sizes:
        rows = [r for r in out['rows'] if r['size'] == size]
        c.log('flat: %7d bindings: current %s ns, flat %s ns' % (
            size, '/'.join(str(r['lpm_ns']) for r in rows), '/'.join(str(r['flat_ns']) for r in rows)))
    return out


if __name__ == '__main__':
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
