"""1. Dispatch cost per lookup, measured by the kernel with BPF_PROG_TEST_RUN.

The real program (rendered from bpf/dispatch.c.j2 with its defaults and loaded
with sk_lookup_program) is run on synthetic lookups. net/bpf/test_run.c
(bpf_prog_test_run_sk_lookup) fills a struct bpf_sk_lookup_kern from our ctx
(family, protocol, local/remote address and port; cookie/sk must be 0), runs
the program ``repeat`` times with preemption disabled and reports the mean
duration per run in ns; after the loop it returns the cookie of the socket the
program selected (0 if none).

The program keeps the bindings in an exact-match hash table keyed on
(protocol, family, port, prefix length, masked address) and tries the prefix
lengths in use, longest first, at each the real port and then port 0 (where
bindings of that kind exist); a (protocol, family) whose set would take more
than eight such lookups is kept in an LPM trie instead (two walks). walk()
models both, so every row carries the number of hash lookups the program
tried (or "trie"), checked against the kernel's result.

Binding sets (bench/bindset.py): N bindings in total, spread evenly over
tcp/udp x IPv4/IPv6. Fillers are host prefixes (/32, /128) drawn at random
from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48, each on one of 17
ports (16 well-known ports and port 0). Per (protocol, family):
  hit port   a filler with a real port, pointed at the label "bench"
  hit port 0 a /24 (/64) on port 0 -> "bench"; the lookup first misses on the
             host length (real port, port 0), then hits at /24 (/64)
  miss       an address inside the populated range that no binding covers
"bench" has a real registered socket per (family, protocol), so a hit runs
bpf_sk_assign() and the kernel returns that socket's cookie.
With N = 1 the table holds exactly the one binding the case needs (a table
per case, applied before each measurement, so the cases still interleave).

Calibration, before and after the sizes, interleaved:
  baseline   r0 = SK_PASS; exit: what test_run itself costs around any program
  hand-over  per (protocol, family): SOCKMAP lookup of the "bench" socket,
             bpf_sk_assign(), bpf_sk_release(): the price any sk_lookup
             program pays to hand a packet to a socket
Length sweep: K distinct prefix lengths in one (protocol, family) table
(bindset.length_sweep_set), a miss that walks all of them and a hit at the
shortest; the design's cost grows with K, not with N.
"""

import contextlib
import socket
import struct

import common as c
from bindset import LABEL, COMBOS, CASES, HIT_PORT, SK_PASS, build_set, single_sets, length_sweep_set

SIZES = [1, 1000, 100000, 1000000]
QUICK_SIZES = [1, 1000]
REPEAT = 1000000
RUNS = 5
# distinct prefix lengths per table, tcp only (udp runs the same code); every length has
# both kinds of port, so K lengths are 2K hash lookups: up to 4 hashed, from 5 on the trie
SWEEP = {4: [1, 2, 3, 4, 5, 8, 16, 33], 6: [1, 2, 3, 4, 5, 16, 129]}
QUICK_SWEEP = {4: [1, 4, 5, 33], 6: [1, 129]}
SWEEP_REPEAT = 100000          # a miss over 129 lengths runs 258 hash lookups
SWEEP_PROTO = 'tcp'


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


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack('<BBhi', code, src << 4 | dst, off, imm)


def baseline_prog():
    """r0 = 1 (SK_PASS); exit -- what test_run costs around any program."""
    insns = insn(0xb7, 0, imm=SK_PASS) + insn(0x95)
    return c.bpf.prog_load(c.bpf.BPF_PROG_TYPE_SK_LOOKUP, 'bench_base', insns, c.bpf.BPF_SK_LOOKUP)


def handover_prog(sockets_fd, dest_id):
    """Only the hand-over: look ``dest_id`` up in the SOCKMAP, bpf_sk_assign() it, release it."""
    mov_x, call = 0xbf, 0x85
    insns = b''.join([
        insn(mov_x, 6, 1),                              # r6 = ctx
        insn(0x62, 10, off=-4, imm=dest_id),            # *(u32 *)(r10 - 4) = dest_id
        insn(0x18, 1, 1, imm=int(sockets_fd)), insn(0),  # r1 = &sockets (ld_imm64, BPF_PSEUDO_MAP_FD)
        insn(mov_x, 2, 10), insn(0x07, 2, imm=-4),      # r2 = r10 - 4
        insn(call, imm=1),                              # r0 = bpf_map_lookup_elem(): sk or NULL
        insn(0x15, 0, off=7),                           # if r0 == 0 goto out
        insn(mov_x, 7, 0),                              # r7 = sk
        insn(mov_x, 1, 6), insn(mov_x, 2, 7), insn(0xb7, 3),
        insn(call, imm=124),                            # bpf_sk_assign(ctx, sk, 0)
        insn(mov_x, 1, 7),
        insn(call, imm=86),                             # bpf_sk_release(sk)
        insn(0xb7, 0, imm=SK_PASS), insn(0x95),         # out: return SK_PASS
    ])
    return c.bpf.prog_load(c.bpf.BPF_PROG_TYPE_SK_LOOKUP, 'bench_handover', insns, c.bpf.BPF_SK_LOOKUP)


def apply_set(pin, entries):
    """(seconds, parsed set): ``entries`` parsed and written with the backend, as the module does."""
    with c.stopwatch() as t:
        parsed = c.bnd.parse_bindings(entries)
        with c.dsp.open_dispatcher(pin) as d:
            d.replace_bindings(parsed)
    return t['s'], parsed


def replace(pin, entries):
    return apply_set(pin, entries)[0]


def walk(parsed, lengths, proto, version, addr, port):
    """(hash lookups tried, label found or None): the lookup loop of dispatch.c.j2 in Python.

    ``lengths`` is bindings.length_sets(parsed), what the program reads. A set
    past bindings.MAX_HASH_PROBES is in the trie: ('trie', label), by the
    precedence model."""
    packed = c.bnd.parse_address(addr)
    if c.bnd.uses_trie(lengths.get((proto, version), [])):
        found = c.bnd.select(parsed.values(), proto, addr, port)
        return 'trie', found.label if found else None
    tried = 0
    for plen, kinds in lengths.get((proto, version), []):
        net = c.bnd.Prefix.masked(version, packed, plen)
        for kind, key_port in ((c.bnd.HAS_PORT, port), (c.bnd.HAS_ANY_PORT, 0)):
            if kinds & kind:
                tried += 1
                found = parsed.get((proto, net, key_port))
                if found:
                    return tried, found.label
    return tried, None


class Probe(object):
    """One thing to time: a program, a lookup, what it must return and the row it makes."""

    def __init__(self, prog, ctx, cookie, row):
        self.prog, self.ctx, self.cookie, self.row = prog, ctx, cookie, row
        self.outs = []


def model_probe(prog, parsed, lengths, combo, addr, port, cookie_of, row):
    """A probe of the dispatch program; the model must agree with the case (hit or miss)."""
    tried, label = walk(parsed, lengths, combo[0], combo[1], addr, port)
    hit = not row['case'].startswith('miss')
    if (label == LABEL) != hit:
        raise AssertionError('bench model: %s %s:%d finds %r, expected a %s' % (
            row, addr, port, label, 'hit' if hit else 'miss'))
    return Probe(prog, ctx_for(combo[0], combo[1], addr, port), cookie_of[combo] if hit else 0,
                 dict(row, lookups=tried))


def timed_rounds(groups, runs, repeat, pin=None):
    """Time every probe ``runs`` times, interleaved: each round runs every group in turn.

    ``groups`` is a list of (entries or None, [Probe]); with entries, the set
    is applied before the group's probes (one table per group)."""
    for _ in range(runs):
        for entries, probes in groups:
            if entries is not None:
                replace(pin, entries)
            for p in probes:
                p.outs.append(c.bpf.prog_test_run(p.prog, p.ctx, repeat))


def finish(probes, result, rows_key):
    """Turn timed probes into rows (median, min, max) and correctness checks."""
    for p in probes:
        verdicts = set(o[0] for o in p.outs)
        got = set(o[1] for o in p.outs)
        durs = [o[2] for o in p.outs]
        result['checks'].append(dict(p.row, ok=verdicts == {SK_PASS} and got == {p.cookie},
                                     verdicts=sorted(verdicts), cookies=sorted(got), want_cookie=p.cookie))
        result[rows_key].append(dict(p.row, ns=c.median(durs), min=min(durs), max=max(durs), runs=durs))


def calibrate(stack, pin, cookie_of, dest_of, runs, repeat, result, when):
    base = stack.enter_context(baseline_prog())
    probes = [Probe(base, ctx_for('tcp', 4, '198.18.0.1', HIT_PORT), 0, {'what': 'baseline', 'when': when})]
    with c.dsp.open_dispatcher(pin) as d:
        for combo in COMBOS:
            prog = stack.enter_context(handover_prog(d.fds['sockets'], dest_of[combo]))
            addr = '198.18.0.1' if combo[1] == 4 else '2001:2::1'
            probes.append(Probe(prog, ctx_for(combo[0], combo[1], addr, HIT_PORT), cookie_of[combo],
                                {'what': 'hand-over', 'when': when, 'proto': combo[0],
                                 'family': 'IPv%d' % combo[1]}))
    timed_rounds([(None, probes)], runs, repeat)
    finish(probes, result, 'calibration')


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


def size_groups(pin, prog, size, cookie_of, result):
    """[(entries or None, [Probe])] for one size; the sets of N >= 8 are applied here."""
    if size == 1:
        groups = []
        for (combo, case), (entries, (addr, port)) in sorted(single_sets().items()):
            parsed = c.bnd.parse_bindings(entries)
            row = {'size': 1, 'proto': combo[0], 'family': 'IPv%d' % combo[1], 'case': case}
            groups.append((entries, [model_probe(prog, parsed, c.bnd.length_sets(parsed), combo, addr, port,
                                                 cookie_of, row)]))
        return groups
    c.log('dispatch: %d bindings: building and applying the set' % size)
    entries, probes = build_set(size)
    if size >= 1000000:
        # Replacing the previous set with a disjoint one of this size in one call
        # (evidence for BENCHMARKS.md: both tables must take the new set).
        result['replace_into_full'] = replace_into_full(pin, entries)
    replace(pin, [])           # start from an empty table
    result['fill_seconds'][size], parsed = apply_set(pin, entries)
    del entries
    lengths = c.bnd.length_sets(parsed)
    group = [model_probe(prog, parsed, lengths, combo, addr, port, cookie_of,
                         {'size': size, 'proto': combo[0], 'family': 'IPv%d' % combo[1], 'case': case})
             for combo in COMBOS for case in CASES for addr, port in [probes[combo][case]]]
    return [(None, group)]


def sweep_groups(prog, sweep, cookie_of):
    """One group per sweep step: the IPv4 and IPv6 tables of that step side by side."""
    groups = []
    for i in range(max(len(v) for v in sweep.values())):
        entries, probes = [], []
        for version, counts in sorted(sweep.items()):
            if i >= len(counts):
                continue
            part, where = length_sweep_set(SWEEP_PROTO, version, counts[i])
            entries += part
            parsed = c.bnd.parse_bindings(part)
            for case, (addr, port) in sorted(where.items()):
                probes.append(model_probe(prog, parsed, c.bnd.length_sets(parsed), (SWEEP_PROTO, version),
                                          addr, port, cookie_of,
                                          {'lengths': counts[i], 'proto': SWEEP_PROTO,
                                           'family': 'IPv%d' % version, 'case': case}))
        groups.append((entries, probes))
    return groups


def run(quick=False):
    sizes = QUICK_SIZES if quick else SIZES
    repeat = 100000 if quick else REPEAT
    sweep_repeat = 20000 if quick else SWEEP_REPEAT
    runs = 3 if quick else RUNS
    sweep = QUICK_SWEEP if quick else SWEEP
    result = {'repeat': repeat, 'runs': runs, 'sizes': sizes, 'rows': [], 'fill_seconds': {}, 'checks': [],
              'calibration': [], 'sweep': [], 'sweep_repeat': sweep_repeat,
              'max_hash_probes': c.bnd.MAX_HASH_PROBES}
    with contextlib.ExitStack() as stack:
        ns = c.namespace(stack)
        fs = c.bpffs(stack)
        target = {'instance': 'b1', 'bpffs': fs, 'netns': ns.path}
        c.log('dispatch: loading the program')
        c.load_program(target)
        pin = c.pin_dir(target)
        # One real socket per (family, protocol) registered for "bench", in the
        # benchmark namespace. test_run itself runs in our (the host's) netns.
        for proto, version in COMBOS:
            host = '127.0.0.1' if version == 4 else '::1'
            srv = c.harness.Server(ns, 'bench', proto, host, register=(pin, LABEL))
            stack.callback(srv.stop)
        with c.dsp.open_dispatcher(pin) as d:
            dests = d.destinations_raw()
            cookies = d.socket_cookies()
        dest_of, cookie_of = {}, {}
        for proto, version in COMBOS:
            fam = socket.AF_INET if version == 4 else socket.AF_INET6
            dest_of[(proto, version)] = dests[(LABEL, fam, c.bnd.PROTOCOLS[proto])]
            cookie_of[(proto, version)] = cookies[dest_of[(proto, version)]]
        result['socket_cookies'] = dict(('%s%d' % k, v) for k, v in cookie_of.items())

        prog = stack.enter_context(c.prog_fd_of(pin))
        c.log('dispatch: calibration (baseline, socket hand-over)')
        calibrate(stack, pin, cookie_of, dest_of, runs, repeat, result, 'before')
        c.log('dispatch: prefix-length sweep %s' % sweep)
        groups = sweep_groups(prog, sweep, cookie_of)
        timed_rounds(groups, runs, sweep_repeat, pin)
        finish([p for _e, probes in groups for p in probes], result, 'sweep')
        for size in sizes:
            groups = size_groups(pin, prog, size, cookie_of, result)
            # rounds interleave the cases, so a noisy moment hits them all alike
            timed_rounds(groups, runs, repeat, pin)
            finish([p for _e, probes in groups for p in probes], result, 'rows')
            c.log('dispatch: %d bindings: %s' % (size, ', '.join(
                '%s%d %s %d ns' % (r['proto'], int(r['family'][-1]), r['case'], r['ns'])
                for r in result['rows'] if r['size'] == size)))
        calibrate(stack, pin, cookie_of, dest_of, runs, repeat, result, 'after')
        cal = result['calibration']
        result['baseline_ns'] = round(c.median([x for r in cal if r['what'] == 'baseline' for x in r['runs']]))
        result['handover_ns'] = round(c.median([x for r in cal if r['what'] == 'hand-over' for x in r['runs']]))
        # the program's own counters saw every hit: proof the hits were real
        expected = dict(('%s%d' % combo, 0) for combo in COMBOS)
        for r in result['rows'] + result['sweep']:
            if not r['case'].startswith('miss'):
                expected['%s%d' % (r['proto'], int(r['family'][-1]))] += \
                    len(r['runs']) * (sweep_repeat if 'lengths' in r else repeat)
        with c.dsp.open_dispatcher(pin) as d:
            result['metrics_bench'] = [dict(x) for x in d.destinations() if x['label'] == LABEL]
        for x in result['metrics_bench']:
            x['expected_lookups'] = expected['%s%s' % (x['protocol'], x['family'][-1])]
        for r in result['sweep']:
            c.log('dispatch: %s, %d lengths, %s: %s lookups, %d ns' % (
                r['family'], r['lengths'], r['case'], r['lookups'], r['ns']))
        c.log('dispatch: baseline %d ns, hand-over %d ns' % (result['baseline_ns'], result['handover_ns']))
    return result


if __name__ == '__main__':
    import json
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1, default=str))
