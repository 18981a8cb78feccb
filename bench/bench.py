"""Run the benchmarks and write the report; bench/run is the entry point.

Each benchmark's figures are kept in bench/results/<name>.json (quick runs in
bench/results-quick/), so running one benchmark again refreshes its section and
keeps the others; BENCHMARKS.md is rendered from all of them.
"""

import argparse
import fcntl
import glob
import os
import subprocess
import sys
import time
import traceback

BENCHMARKS = [
    ('dispatch', 'b1_dispatch', 'dispatch cost per lookup (BPF_PROG_TEST_RUN)'),
    ('throughput', 'b2_throughput', 'TCP connections/s and UDP datagrams/s, steered vs direct'),
    ('alternatives', 'b3_alternatives', 'all 65,535 ports: sockets per port, TPROXY, dispatcher'),
    ('control', 'b4_control_plane', 'sk_lookup_binding and the role: apply, no-op, one change'),
    ('program', 'b5_program', 'program load, rerun, upgrade, compile memory'),
    ('fleet', 'b6_fleet', 'site.yml over 12 and 50 namespace hosts'),
]


def clean_leftovers():
    """Remove what a killed earlier run may have left: only our own names."""
    import common as c
    for name in c.stale_namespaces():
        c.log('removing leftover namespace %s' % name)
        pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        subprocess.run(['ip', 'netns', 'del', name], check=False)
    for path in glob.glob('/tmp/bpfsteer-bench-bpffs-*/bpf'):
        if os.path.ismount(path):
            subprocess.run(['umount', path], check=False)
        subprocess.run(['rm', '-rf', os.path.dirname(path)], check=False)
    for base in ('/sys/fs/cgroup', c.CGROUP_V1_MEMORY):
        for path in glob.glob(os.path.join(base, c.NS_PREFIX + '-*')):
            try:
                os.rmdir(path)
            except OSError:
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('names', nargs='*', help='benchmarks to run (default: all)')
    parser.add_argument('--quick', action='store_true', help='short smoke run; writes bench/out/BENCHMARKS.quick.md')
    parser.add_argument('--output', help='where to write the report')
    parser.add_argument('--list', action='store_true')
    parser.add_argument('--report-only', action='store_true', help='render the report from the stored results')
    args = parser.parse_args()
    if args.list:
        for name, _mod, what in BENCHMARKS:
            print('%-13s %s' % (name, what))
        return 0
    # imported only now: they need the .venv that bench/run bootstraps
    import common as c
    import report
    known = [b[0] for b in BENCHMARKS]
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error('unknown benchmark(s) %s; known: %s' % (', '.join(unknown), ', '.join(known)))
    selected = args.names or known
    results_dir = os.path.join(c.BENCH, 'results-quick' if args.quick else 'results')
    os.makedirs(results_dir, exist_ok=True)
    output = args.output or (os.path.join(c.BENCH, 'out', 'BENCHMARKS.quick.md') if args.quick
                             else os.path.join(c.ROOT, 'BENCHMARKS.md'))
    failures = []
    if not args.report_only:
        # One run at a time: the leftover cleanup below would tear down a running one.
        lock = open('/run/lock/bpfsteer-bench.lock', 'w')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            parser.error('another bench/run is running on this machine')
        c.install_signal_handlers()
        clean_leftovers()
        c.dump_json(os.path.join(results_dir, 'machine.json'), c.machine())
        for name, modname, what in BENCHMARKS:
            if name not in selected:
                continue
            c.log('=== %s: %s%s' % (name, what, ' (quick)' if args.quick else ''))
            t0 = time.time()
            try:
                mod = __import__(modname)
                data = mod.run(quick=args.quick)
                status = 'ok'
            except c.Interrupted:
                raise
            except Exception:  # pylint: disable=broad-except
                data = {'error': traceback.format_exc()}
                status = 'failed'
                failures.append(name)
                c.log('%s FAILED:\n%s' % (name, data['error']))
            data['_meta'] = {'benchmark': name, 'status': status, 'quick': args.quick,
                             'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'seconds': time.time() - t0,
                             'loadavg_after': open('/proc/loadavg').read().split()[:3]}
            c.dump_json(os.path.join(results_dir, name + '.json'), data)
            c.log('=== %s: %s in %.0f s' % (name, status, time.time() - t0))
            clean_leftovers()
    os.makedirs(os.path.dirname(output), exist_ok=True)
    report.write(results_dir, output, quick=args.quick)
    c.log('wrote %s' % output)
    if failures:
        c.log('failed: %s' % ', '.join(failures))
        return 1
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except BaseException as exc:  # the signal handlers' Interrupted, after every cleanup ran
        if type(exc).__name__ != 'Interrupted':
            raise
        print('bench: interrupted (%s); everything it created has been removed' % exc, file=sys.stderr)
        sys.exit(130)
