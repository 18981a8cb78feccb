"""1. Dispatch cost per lookup, measured by the kernel with BPF_PROG_TEST_RUN.

The real program (rendered from bpf/dispatch.c.j2 with its defaults and loaded
with sk_lookup_program) is run on synthetic lookups. net/bpf/test_run.c
(bpf_prog_test_run_sk_lookup) fills a struct bpf_sk_lookup_kern from our ctx
(family, protocol, local/remote address and port; cookie/sk must be 0), runs
the program ``repeat`` times with preemption disabled and reports the mean
duration per run in ns; after the loop it returns the cookie of the socket the
program selected (0 if none).

Binding sets (bench/bindset.py): N bindings in total, spread evenly over
tcp/udp x IPv4/IPv6. Fillers are host prefixes (/32, /128) drawn at random
from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48, each on one of 17
ports (16 well-known ports and port 0), so the trie is as deep as a random set
of N keys makes it and both lookups the program does (real port, then port 0)
walk populated subtrees. Per (protocol, family):
  hit port   a filler with a real port, pointed at the label "bench"
  hit port 0 a /24 (/64) on port 0 -> "bench"; the lookup first misses on its
             real port, then finds the port-0 binding (two full lookups)
  miss       an address inside the populated range that no binding covers
"bench" has a real registered socket per (family, protocol), so a hit runs
bpf_sk_assign() and the kernel returns that socket's cookie.
With N = 1 the table holds exactly the one binding the case needs.

A baseline program (r0 = SK_PASS; exit) measures what test_run itself costs.
"""

import contextlib
import socket

import common as c
from bindset import LABEL, COMBOS, CASES, SK_PASS, build_set, single_sets

SIZES = [1, 1000, 100000, 1000000]
QUICK_SIZES = [1, 1000]
REPEAT = 1000000
RUNS = 5


def ctx_for(proto, version, addr, port):
    ctx = c.bpf.SkLookupCtx()
    ctx.protocol = socket.IPPROTO_TCP if proto == 'tcp' else socket.IPPROTO_UDP
    ctx.remote_port = socket.htons(40000)         # network byte order, as the kernel has it
    ctx.local_port = port                         # host byte order
    if version == 4:
        ctx.family = socket.AF_INET
        ctx.local_ip4 = c.ip4_u32(addr)
        ctx.remote_ip4 = c.ip4_u32('198.51.100.1')
    else:
        ctx.family = socket.AF_INET6
        ctx.local_ip6[:] = c.ip6_words(addr)
        ctx.remote_ip6[:] = c.ip6_words('2001:db8::1')
    return ctx


def baseline_prog():
    """r0 = 1 (SK_PASS); exit -- what test_run costs around any program."""
    insns = bytes([0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
    return c.bpf.prog_load(c.bpf.BPF_PROG_TYPE_SK_LOOKUP, 'bench_base', insns, c.bpf.BPF_SK_LOOKUP)


def replace(pin, entries):
    with c.stopwatch() as t:
        with c.dsp.open_dispatcher(pin) as d:
            d.replace_bindings(c.bnd.parse_bindings(entries))
    return t['s']


def replace_into_full(pin, entries):
    """Try to replace the current set with ``entries`` directly; report what happens."""
    with c.dsp.open_dispatcher(pin) as d:
        before = len(d.bindings())
        active_before = d.active_index()
    out = {'from': before, 'to': len(entries)}
    try:
        out['seconds'] = replace(pin, entries)
        out['ok'] = True
    except c.bpf.BPFError as exc:
        out.update(ok=False, errno=exc.errno, error=str(exc))
    with c.dsp.open_dispatcher(pin) as d:
        out['active_unchanged'] = d.active_index() == active_before and len(d.bindings()) == before
        out['max_bindings'] = d.max_bindings
    c.log('dispatch: replacing %d bindings with %d directly: %s' % (
        before, len(entries), 'ok' if out['ok'] else out['error']))
    return out


def run(quick=False):
    sizes = QUICK_SIZES if quick else SIZES
    repeat = 100000 if quick else REPEAT
    runs = 3 if quick else RUNS
    result = {'repeat': repeat, 'runs': runs, 'sizes': sizes, 'rows': [], 'fill_seconds': {}, 'checks': []}
    with contextlib.ExitStack() as stack:
        ns = c.namespace(stack)
        fs = c.bpffs(stack)
        target = {'instance': 'b1', 'bpffs': fs, 'netns': ns.path}
        c.log('dispatch: loading the program')
        c.load_program(target)
        pin = c.pin_dir(target)
        # One real socket per (family, protocol) registered for "bench", in the
        # benchmark namespace. test_run itself runs in our (the host's) netns.
        servers = {}
        for proto, version in COMBOS:
            host = '127.0.0.1' if version == 4 else '::1'
            srv = c.harness.Server(ns, 'bench', proto, host, register=(pin, LABEL))
            stack.callback(srv.stop)
            servers[(proto, version)] = srv
        with c.dsp.open_dispatcher(pin) as d:
            dests = d.destinations_raw()
            cookies = d.socket_cookies()
        cookie_of = {}
        for proto, version in COMBOS:
            fam = socket.AF_INET if version == 4 else socket.AF_INET6
            cookie_of[(proto, version)] = cookies[dests[(LABEL, fam, c.bnd.PROTOCOLS[proto])]]
        result['socket_cookies'] = dict(('%s%d' % k, v) for k, v in cookie_of.items())

        prog = stack.enter_context(c.prog_fd_of(pin))
        base = stack.enter_context(baseline_prog())
        any_ctx = ctx_for('tcp', 4, '198.18.0.1', 80)
        base_ns = []
        for _ in range(runs):
            base_ns.append(c.bpf.prog_test_run(base, any_ctx, repeat)[2])
        result['baseline_ns'] = c.median(base_ns)

        for size in sizes:
            if size == 1:
                tables = single_sets()
                samples = {}
                for (combo, case), (entries, (addr, port)) in sorted(tables.items()):
                    replace(pin, entries)
                    ctx = ctx_for(combo[0], combo[1], addr, port)
                    samples[(combo, case)] = [c.bpf.prog_test_run(prog, ctx, repeat) for _ in range(runs)]
            else:
                c.log('dispatch: %d bindings: building and applying the set' % size)
                entries, probes = build_set(size)
                if size == max(sizes) and size >= 1000000:
                    # Evidence for BENCHMARKS.md: Dispatcher._sync_table writes before it
                    # deletes, so replacing the previous set with a disjoint set of
                    # max_bindings needs more slots than the table has.
                    result['replace_into_full'] = replace_into_full(pin, entries)
                replace(pin, [])           # start from an empty table
                result['fill_seconds'][size] = replace(pin, entries)
                del entries
                samples = dict(((combo, case), []) for combo in COMBOS for case in CASES)
                ctxs = dict(((combo, case), ctx_for(combo[0], combo[1], *probes[combo][case]))
                            for combo in COMBOS for case in CASES)
                # rounds interleave the cases, so a noisy moment hits them all alike
                for _ in range(runs):
                    for key, ctx in ctxs.items():
                        samples[key].append(c.bpf.prog_test_run(prog, ctx, repeat))
            for (combo, case), outs in sorted(samples.items()):
                verdicts = set(o[0] for o in outs)
                got = set(o[1] for o in outs)
                want = 0 if case == 'miss' else cookie_of[combo]
                ok = verdicts == {SK_PASS} and got == {want}
                result['checks'].append({'size': size, 'combo': '%s%d' % combo, 'case': case, 'ok': ok,
                                         'verdicts': sorted(verdicts), 'cookies': sorted(got), 'want_cookie': want})
                durs = [o[2] for o in outs]
                result['rows'].append({'size': size, 'proto': combo[0], 'family': 'IPv%d' % combo[1],
                                       'case': case, 'ns': c.median(durs), 'min': min(durs), 'max': max(durs)})
            c.log('dispatch: %d bindings: %s' % (size, ', '.join(
                '%s%d %s %d ns' % (r['proto'], int(r['family'][-1]), r['case'], r['ns'])
                for r in result['rows'] if r['size'] == size)))
        # the program's own counters saw repeat x runs lookups per hit: proof the hits were real
        with c.dsp.open_dispatcher(pin) as d:
            result['metrics_bench'] = [dict(x) for x in d.destinations() if x['label'] == LABEL]
    return result


if __name__ == '__main__':
    import json
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1, default=str))
