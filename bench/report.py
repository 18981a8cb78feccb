"""Render BENCHMARKS.md from the stored results (bench/results/*.json).

Every figure in the report comes from those files; the prose around the
tables states what was measured and, where a target is missed, why, using the
same figures.
"""

import json
import os

COMBO_COLS = [('tcp', 'IPv4'), ('udp', 'IPv4'), ('tcp', 'IPv6'), ('udp', 'IPv6')]
CASES = ['hit port', 'hit port 0', 'miss']


def load(results_dir, name):
    path = os.path.join(results_dir, name + '.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def n(x):
    return '{:,}'.format(x)


def f1(x):
    return '-' if x is None else '%.1f' % x


def f2(x):
    return '-' if x is None else '%.2f' % x


def mib(b):
    if b is None:
        return '-'
    if b >= 2 ** 20:
        return '%.1f MiB' % (b / 2.0 ** 20)
    return '%.0f KiB' % (b / 1024.0) if b >= 1024 else '%d B' % b


def pct(r):
    return '-' if r is None else '%+.1f %%' % ((r - 1) * 100)


def table(header, rows):
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    out += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(out) + '\n'


def meta_line(data):
    m = data.get('_meta', {})
    s = '_Run %s, %.0f s%s; load average after: %s._' % (m.get('date', '?'), m.get('seconds', 0),
                                                         ' (quick)' if m.get('quick') else '',
                                                         ' '.join(m.get('loadavg_after', [])))
    return s + '\n'


def failed(data, title, name):
    if data is None:
        return '## %s\n\nNot run yet (`bench/run %s`).\n' % (title, name), None
    if data.get('error'):
        return '## %s\n\n%s\nThe benchmark failed:\n\n```\n%s\n```\n' % (
            title, meta_line(data), data['error'][-3000:]), None
    return None, data


# --- sections ------------------------------------------------------------------

def case_rows(d, size, case=None):
    return [r for r in d['rows'] if r['size'] == size and (case is None or r['case'] == case)]


def worst(d, size, case=None):
    """The slowest of the four (protocol, family) columns, gross ns."""
    vals = [r['ns'] for r in case_rows(d, size, case)]
    return max(vals) if vals else None


def span(values, fmt='%d'):
    """'7' or '5–9' ('-' for none)."""
    if not values:
        return '-'
    lo, hi = min(values), max(values)
    return fmt % lo if fmt % lo == fmt % hi else (fmt + '–' + fmt) % (lo, hi)


def lookups_of(rows):
    vals = [r['lookups'] for r in rows if 'lookups' in r]
    if any(v == 'trie' for v in vals):
        return 'trie' if all(v == 'trie' for v in vals) else '?'
    return span(vals) if vals else '?'


def handover(d):
    """(gross, net) ns of handing a packet to a socket, or (None, None) in older results."""
    h = d.get('handover_ns')
    return (None, None) if h is None else (h, h - d['baseline_ns'])


def sweep_slope(d, family):
    """(ns per extra hash lookup, fewest-lengths miss row, most-lengths miss row) from the sweep's misses."""
    misses = sorted((r for r in d.get('sweep', []) if r['family'] == family and r['case'] == 'miss'
                     and isinstance(r['lookups'], int)), key=lambda r: r['lookups'])
    if len(misses) < 2 or misses[-1]['lookups'] == misses[0]['lookups']:
        return None, None, None
    lo, hi = misses[0], misses[-1]
    return (hi['ns'] - lo['ns']) / float(hi['lookups'] - lo['lookups']), lo, hi


def dispatch_section(d):
    lines = ['## 1. Dispatch cost per lookup\n', meta_line(d)]
    lines.append('''**Method.** `bench/b1_dispatch.py`. The program rendered from `bpf/dispatch.c.j2` with its
defaults is loaded with `sk_lookup_program` into a scratch namespace and bpffs; the bindings are
written with the backend (`Dispatcher.replace_bindings`, the code the module runs); one real socket
per (protocol, family) is registered for the label `bench` by a server process in the namespace.
The program fd comes from the link's program id. `BPF_PROG_TEST_RUN` runs it %s times per
measurement on a synthetic `struct bpf_sk_lookup` (family, protocol, local and remote address and
port; `net/bpf/test_run.c` requires `sk`/`cookie` to be 0 and a local port below 65,536) with
preemption off, and reports the mean duration per run; each figure is the median of %d such
measurements, with the cases interleaved in rounds.

**The design measured.** The bindings are in an exact-match BPF hash table keyed on (protocol,
family, port, prefix length, masked address). Per table and per (protocol, family) an array lists
the prefix lengths in use, longest first, each marked "has bindings on a real port" and/or "has
bindings on port 0". A lookup tries those lengths in order, at each the real port and then port 0
(only the kinds that exist at that length); the first hit wins, so the longest prefix wins and at
equal length the specific port. A hit then counts the lookup in the destination's per-CPU
counters, takes the destination's socket from the SOCKMAP and hands the packet to it with
`bpf_sk_assign()`. The cost is therefore a constant plus one hash lookup per (length, kind) tried:
independent of the number of bindings, but growing with the number of distinct prefix lengths in
use, and a miss tries them all. (The two tables the backend flips between are inner maps of an
array of maps, each sized to its set.)

N bindings in total, spread evenly over tcp/udp × IPv4/IPv6: random host prefixes (/32, /128) in
198.18.0.0/15 and 2001:2::/48 on 17 ports (port 0 among them), plus per (protocol, family) one /24
(/64) on port 0. From 1,000 bindings on, each (protocol, family) thus uses two prefix lengths: the
host length with both kinds, /24 (/64) with port 0 only. *hit port*: a binding on the real port;
*hit port 0*: an address in the /24 (/64), which first misses at the host length on its port and
on port 0; *miss*: an address inside the populated range that no binding covers. With N = 1 the
table holds only the binding the case needs. The *lookups* column is the number of hash lookups
the program tries, from a model of its loop whose answer (hit or miss) had to agree with the
case.

**Measured in the same run, to take the figures apart.** *test_run's own loop*: a program that
only returns `SK_PASS`. *Socket hand-over*: a hand-written program that does only what any
sk_lookup program does to steer a packet, a SOCKMAP lookup of the registered socket,
`bpf_sk_assign()` and `bpf_sk_release()`, per (protocol, family). Both are timed before and after
the sizes, interleaved. *Prefix lengths in use*: tcp tables whose bindings use K distinct lengths
(the K longest: /32, /31, …; /128, /127, …), at each length a prefix next to the probe address on a
real port and on port 0, so that every length costs two lookups that miss (the most a length can
cost), and at the shortest length also the probe's own prefix on its port. *miss* (another port)
tries every length; *hit at the shortest* finds its binding at the last length. %s repeats per
measurement there, %d measurements.
''' % (n(d['repeat']), d['runs'], n(d.get('sweep_repeat', 0)), d['runs']))
    checks = d.get('checks', [])
    bad = [c for c in checks if not c['ok']]
    metrics = d.get('metrics_bench', [])
    counted = ', '.join('%s %s %s' % (m['protocol'], m['family'].replace('ipv', 'IPv'), n(m['lookups']))
                        for m in metrics)
    agree = all(m.get('expected_lookups') == m['lookups'] for m in metrics)
    lines.append('''**What test_run does with a real socket.** The sockets live in the benchmark namespace;
test_run runs in the caller's (the host's) namespace. `bpf_sk_assign()` in a sk_lookup program
checks the socket's family, protocol and state, not its namespace, and test_run returns the
selected socket's cookie: every hit (and every hand-over) returned `SK_PASS` with the cookie of the
registered socket, every miss `SK_PASS` with cookie 0 (%d checks, %d failed). The program's
per-destination counters for `bench` saw %s lookups, %s.
''' % (len(checks), len(bad), counted,
       'exactly the number of hits timed' if agree and metrics else 'NOT the number of hits timed'))
    rows = []
    by = dict(((r['size'], r['case'], r['proto'], r['family']), r) for r in d['rows'])
    for size in d['sizes']:
        for case in CASES:
            cells = []
            for proto, fam in COMBO_COLS:
                r = by.get((size, case, proto, fam))
                cells.append('-' if r is None else '%d' % r['ns'])
            rows.append([n(size), case, lookups_of(case_rows(d, size, case))] + cells)
    lines.append('Kernel-reported mean ns per lookup, gross (test_run\'s own loop included), median of %d runs:\n\n'
                 % d['runs'])
    lines.append(table(['bindings', 'case', 'lookups', 'tcp IPv4', 'udp IPv4', 'tcp IPv6', 'udp IPv6'], rows))
    fills = d.get('fill_seconds', {})
    if fills:
        lines.append('\nWriting the set into an empty instance with the backend took %s.\n' % ', '.join(
            '%s s for %s' % (f1(v), n(int(k))) for k, v in sorted(fills.items(), key=lambda kv: int(kv[0]))))
    lines.append(fixed_costs(d))
    lines.append(sweep_part(d))
    lines.append(dispatch_verdict(d))
    return '\n'.join(lines)


def fixed_costs(d):
    cal = d.get('calibration', [])
    base = d['baseline_ns']
    gross, net = handover(d)
    if gross is None:
        return ''
    by_when = dict((r['when'], r['ns']) for r in cal if r['what'] == 'baseline')
    per_combo = ', '.join('%s %s %s' % (r['proto'], r['family'], span(
        [x['ns'] for x in cal if x['what'] == 'hand-over' and x['proto'] == r['proto'] and x['family'] == r['family']]))
        for r in cal if r['what'] == 'hand-over' and r['when'] == 'before')
    hit1 = case_rows(d, 1, 'hit port')
    miss1 = dict(((r['proto'], r['family']), r['ns']) for r in case_rows(d, 1, 'miss'))
    diffs = [r['ns'] - miss1[(r['proto'], r['family'])] for r in hit1 if (r['proto'], r['family']) in miss1]
    out = ['''
**Fixed costs.** test_run's own loop: **%d ns** (%s before the sizes, %s after). Handing the packet
to a socket (SOCKMAP lookup, `bpf_sk_assign()`, `bpf_sk_release()`): **%d ns gross, %d ns net** of
that loop (gross per protocol and family, before and after: %s). That price is the kernel's, paid
by any sk_lookup program that steers a packet, whatever it does to find the socket; below, the
program's own cost of a hit is its net figure minus this.''' % (
        base, by_when.get('before', '-'), by_when.get('after', '-'), gross, net, per_combo)]
    if diffs:
        out.append(''' Cross-check: at 1 binding a hit on a port and a miss both try one hash lookup,
and the hit costs %s ns more: the hand-over (%d ns) plus the program's work after a match
(reading the destination, its counters), not timed separately.''' % (span(diffs), net))
    return ''.join(out) + '\n'


def sweep_part(d):
    sweep = d.get('sweep') or []
    if not sweep:
        return ''
    base = d['baseline_ns']
    rows = []
    by = dict(((r['family'], r['lengths'], r['case']), r) for r in sweep)
    for fam in ('IPv4', 'IPv6'):
        for k in sorted(set(r['lengths'] for r in sweep if r['family'] == fam)):
            m, h = by.get((fam, k, 'miss')), by.get((fam, k, 'hit shortest'))
            rows.append([fam, k] + [x for r in (m, h) for x in (
                ('-', '-', '-') if r is None else (r['lookups'], n(r['ns']), n(int(r['ns'] - base))))])
    out = ['\nCost against the number of distinct prefix lengths in use (tcp; gross and net ns, median of '
           '%d runs):\n\n' % d['runs']]
    out.append(table(['family', 'lengths in use', 'miss: lookups', 'gross', 'net', 'hit at the shortest: '
                      'lookups', 'gross', 'net'], rows))
    slopes = [(fam,) + sweep_slope(d, fam) for fam in ('IPv4', 'IPv6')]
    slopes = [x for x in slopes if x[1] is not None]
    if slopes:
        out.append('''
Each further hash lookup adds **%s** to a miss: %s. Each length in use costs one lookup per kind
present at it (a real port, port 0), on every miss and on every hit at a shorter length. Past %d
such lookups (here: from 5 lengths with both kinds on) the backend keeps that protocol and
family in an LPM trie instead, rows *trie*: two walks per packet, whatever the number of lengths,
which is what bounds the worst case. Section 1's sets use two lengths per protocol and family
(3 lookups per miss); a set of host prefixes on real ports only, 1.
''' % (' and '.join('%.1f ns (%s)' % (slope, fam) for fam, slope, _lo, _hi in slopes),
            '; '.join('%s %s ns with %d lookups, %s ns with %d' % (
                fam, n(lo['ns']), lo['lookups'], n(hi['ns']), hi['lookups']) for fam, _s, lo, hi in slopes),
            d.get('max_hash_probes', 8)))
    return ''.join(out)


FLAT_LIMIT = 1.15     # 1,000,000 vs 1,000 bindings: "flat" if within 15 %


def case_figures(d):
    """Per case: (case, lookups, {size: slowest gross ns}, ratio top/low or None)."""
    sizes = [s for s in d['sizes'] if s >= 1000]
    lo, top = (min(sizes), max(sizes)) if sizes else (None, None)
    out = []
    for case in CASES:
        g = dict((s, worst(d, s, case)) for s in sizes)
        ratio = g[top] / float(g[lo]) if lo and top != lo else None
        out.append((case, lookups_of([r for s in sizes for r in case_rows(d, s, case)]), g, ratio))
    return out, lo, top


def dispatch_target(d):
    """(verdict text, case figures, smallest and largest size >= 1,000, the size the target names)."""
    base = d['baseline_ns']
    figs, lo, top = case_figures(d)
    if lo is None:
        return 'not measured (no size of 1,000 bindings or more was run)', figs, lo, top, None
    big = 100000 if 100000 in d['sizes'] else top
    ratios = [r for _c, _l, _g, r in figs if r is not None]
    flat = (max(ratios) <= FLAT_LIMIT) if ratios else None
    gross_ok = [case for case, _l, g, _r in figs if g[big] < 100]
    net_ok = [case for case, _l, g, _r in figs if g[big] >= 100 and g[big] - base < 100]
    over = [case for case, _l, g, _r in figs if g[big] - base >= 100]
    if flat and not net_ok and not over:
        return 'met', figs, lo, top, big
    under = '; '.join(part for part in (
        'gross for %s' % ', '.join(gross_ok) if gross_ok else '',
        'only net of test_run\'s loop for %s' % ', '.join(net_ok) if net_ok else '',
        '**missed** for %s' % ', '.join(over) if over else '') if part)
    flat_text = {True: 'flat: met', False: 'flat: **missed**', None: 'flat: not measured'}[flat]
    verdict = '%s; under 100 ns at %s bindings: %s' % (flat_text, n(big), under)
    return verdict, figs, lo, top, big


def dispatch_verdict(d):
    base = d['baseline_ns']
    _hg, hnet = handover(d)
    verdict, figs, lo, top, big = dispatch_target(d)
    out = ['\n**Target: well under 100 ns per lookup at 100,000 bindings, and flat as bindings grow — %s.**\n'
           % verdict.replace('**', '')]
    if lo is None:
        return out[0]
    ratios = [r for _c, _l, _g, r in figs if r is not None]
    sizes = sorted(figs[0][2])
    rows = []
    for case, looks, g, ratio in figs:
        hit = case != 'miss'
        own = g[big] - base - (hnet if hit and hnet is not None else 0)
        rows.append([case, looks, ' / '.join('%d' % g[s] for s in sizes),
                     ' / '.join('%d' % (g[s] - base) for s in sizes),
                     ('%d' % hnet if hnet is not None else '?') if hit else '-', '%d' % own,
                     '-' if ratio is None else '%.2f' % ratio])
    out.append('\nSlowest of the four protocol/family columns, ns per lookup at %s bindings:\n\n'
               % ' / '.join(n(s) for s in sizes))
    out.append(table(['case', 'hash lookups', 'gross', 'net of test_run\'s loop', 'of which socket hand-over',
                      'program\'s own at %s' % n(big), '%s ÷ %s' % (n(top), n(lo))], rows))
    slope = sweep_slope(d, 'IPv4')[0]
    per = ', about %.0f ns each (the length sweep above)' % slope if slope else ''
    flat_text = ('*Flat.* From %s to %s bindings the slowest column of each case changes by a factor of %s%s. '
                 % (n(lo), n(top), span(ratios, '%.2f'), ': the number of bindings does not drive the cost'
                    if max(ratios) <= FLAT_LIMIT else '')) if ratios else ''
    out.append('\n%s*Under 100 ns.* %s\n' % (flat_text, under_100_text(figs, big, base, hnet)))
    out.append('''
*Why.* In these sets a hit on a port is one hash lookup; the port-0 case and a miss are three (the
host length on the port and on port 0, then /24 or /64 on port 0)%s. A hit also pays the socket
hand-over (%s ns net), the kernel's price for steering at all. A miss is what every connection
and datagram arriving in the namespace that no binding steers pays. What the cost grows with is
the number of distinct prefix lengths in use (table above), not the number of bindings. In these runs
every key is in cache because test_run repeats one lookup; with real traffic over many keys a hash
lookup can cost a cache miss more.

The previous design (two LPM-trie walks per lookup) cost 210–284 ns at 100,000 bindings and
235–307 ns at 1,000,000, gross, growing with log2 of the number of bindings (BENCHMARKS.md as of
commit 0dac502).
''' % (per, '?' if hnet is None else '%d' % hnet))
    return ''.join(out)


def under_100_text(figs, big, base, hnet):
    parts = []
    for case, looks, g, _r in figs:
        gross, net = g[big], g[big] - base
        if gross < 100:
            state = 'under 100 ns gross'
        elif net < 100:
            state = 'under 100 ns only net of test_run\'s loop'
        else:
            state = 'over 100 ns even net of test_run\'s loop'
        extra = ''
        if case != 'miss' and hnet is not None:
            extra = ', %d ns of it the socket hand-over' % hnet
        parts.append('*%s* (%s hash lookup%s): %d ns gross, %d ns net%s: %s.' % (
            case, looks, '' if looks == '1' else 's', gross, net, extra, state))
    return ' '.join(parts)


SAME = 'direct, 198.19.255.10'


def steered_ratio(t, proto, mode='steered'):
    """(ratio, per-round list, baseline name): against the same address when measured."""
    x = t[proto][mode]
    if 'same_addr_ratio_per_round_median' in x:
        return x['same_addr_ratio_per_round_median'], x['same_addr_ratio_per_round'], SAME
    return x['ratio_per_round_median'], x['ratio_per_round'], 'direct'


def throughput_section(t, d=None):
    lines = ['## 2. TCP connections/s and UDP datagrams/s through the dispatcher\n', meta_line(t)]
    modes = t.get('modes') or ['direct', 'steered', 'passthrough']
    lines.append('''**Method.** `bench/b2_throughput.py`, load generator `bench/loadgen.c` (C, epoll server, threaded
closed-loop client). Namespaces with the same C echo servers:

* *direct*: no dispatcher; servers bound to 127.0.0.1 (TCP 7000, UDP 7001), the client connects
  there.
* *direct, 198.19.255.10*: the same namespace, servers bound to 198.19.255.10 (TCP 80, UDP 53; a
  local route on lo): the address the steered client uses, without a dispatcher. **This is the
  baseline of the target**: the same server bound directly to the address the client uses.
* *steered*: the dispatch program with %s bindings (section 1's random set plus
  `tcp 198.19.255.10/32:80 → web` and `udp 198.19.255.10/32:53 → dns`), servers bound to 127.0.0.1
  and registered with `sk_lookup_socket`; the client connects to 198.19.255.10 and the program hands
  every connection or datagram to the server socket.
* *passthrough*: the steered namespace, client to 127.0.0.1: nothing matches, the program runs and
  passes (three hash lookups, all misses); what every connection that is not steered pays in a
  namespace with a dispatcher.
* *steered, 2 bindings*: as steered, in its own namespace, with only the two steering bindings
  (one prefix length per protocol instead of two, one hash lookup per hit either way).

TCP: connect, 1 byte each way, close (RST, so no TIME_WAIT). UDP: 1 byte and its echo; the echo to
the client is looked up too (one more program run, a miss, in a dispatcher namespace). %d client
threads, %d s per run, %d rounds; the order of the modes rotates each round; ratios are taken per
round (same moment) and their median given.
''' % (n(t['bindings']), t['threads'], t['seconds'], t['rounds']))
    rows = []
    for proto, unit in (('tcp', 'connections/s'), ('udp', 'round trips/s')):
        s = t[proto]
        for m in modes:
            x = s[m]
            same = '-'
            if 'same_addr_ratio_per_round_median' in x:
                same = '%.3f (%s)' % (x['same_addr_ratio_per_round_median'], pct(x['same_addr_ratio_per_round_median']))
            rows.append(['%s %s' % (proto.upper(), unit), m, n(int(x['rate'])),
                         '%s – %s' % (n(int(x['min'])), n(int(x['max']))),
                         f1(x['p50_us']), f1(x['p99_us']), n(x['errors']),
                         '-' if m == 'direct' else '%.3f (%s)' % (x['ratio_per_round_median'],
                                                                  pct(x['ratio_per_round_median'])), same])
    lines.append(table(['traffic', 'mode', 'median rate', 'range', 'p50 µs', 'p99 µs', 'errors',
                        'vs direct', 'vs %s' % SAME], rows))
    tcp_r, tcp_rounds, base = steered_ratio(t, 'tcp')
    udp_r, udp_rounds, _ = steered_ratio(t, 'udp')
    met = tcp_r >= 0.97 and udp_r >= 0.97
    lines.append('\n**Target: steered at most 3 %% slower than the same server bound directly — %s** (against '
                 '*%s*: TCP %s ± %.1f, UDP %s ± %.1f, median of the per-round ratios ± its standard error; '
                 'per round TCP %s; UDP %s).\n' % (
                     throughput_verdict(t) + '.', base, pct(tcp_r), sem(tcp_rounds) * 100, pct(udp_r),
                     sem(udp_rounds) * 100,
                     ', '.join('%.2f' % r for r in tcp_rounds), ', '.join('%.2f' % r for r in udp_rounds)))
    lines.append(throughput_explanation(t, met, d))
    return '\n'.join(lines)


def throughput_verdict(t):
    """met / missed / not shown (below 0.97 by less than the standard error)."""
    verdicts = []
    for proto in ('tcp', 'udp'):
        r, rounds, _ = steered_ratio(t, proto)
        verdicts.append('met' if r >= 0.97 else ('not shown' if r + sem(rounds) >= 0.97 else 'missed'))
    if all(v == 'met' for v in verdicts):
        return 'met'
    if 'missed' in verdicts:
        return 'missed'
    return 'not shown: the medians are below it, by less than the uncertainty of the measurement here'


def lookup_cost_us(d, bindings):
    """Median program cost (minus test_run's loop) at the size nearest ``bindings``, in µs."""
    if not d or d.get('error') or not d.get('rows'):
        return 0.25
    size = min(d['sizes'], key=lambda s: abs(s - bindings))
    vals = sorted(r['ns'] for r in d['rows'] if r['size'] == size)
    return (vals[len(vals) // 2] - d['baseline_ns']) / 1000.0


def throughput_explanation(t, met, d):
    lookup_us = lookup_cost_us(d, t['bindings'])
    tcp = t['tcp']
    udp = t['udp']
    out = []
    out.append('''
*Reading it.* Both cores run client, server and the kernel's network processing. A TCP transaction
costs about %.0f µs of CPU here (2 cores / %s per s) and runs the program once (the SYN; the rest of
the handshake finds the request socket in the established table). A UDP round trip costs about
%.0f µs and runs it twice in a dispatcher namespace (request: hit; echo: miss). Section 1 puts a
lookup at about %.2f µs with this many bindings when everything is in cache (its median case,
without test_run's own loop), which would be %.1f %% of a TCP transaction and %.1f %% of a UDP round
trip. The noise of this shared machine shows in the range column and the per-round ratios: a single
round's ratio lies anywhere between %.2f and %.2f, which is why there are many short interleaved
rounds and only medians of per-round ratios are compared; their standard error here (%.1f and %.1f
points) is %s the 3 %% the target allows.
''' % (2e6 / tcp['direct']['rate'], n(int(tcp['direct']['rate'])), 2e6 / udp['direct']['rate'], lookup_us,
       lookup_us / (2e6 / tcp['direct']['rate']) * 100, 2 * lookup_us / (2e6 / udp['direct']['rate']) * 100,
       min(steered_ratio(t, 'tcp')[1] + steered_ratio(t, 'udp')[1]),
       max(steered_ratio(t, 'tcp')[1] + steered_ratio(t, 'udp')[1]),
       sem(steered_ratio(t, 'tcp')[1]) * 100, sem(steered_ratio(t, 'udp')[1]) * 100,
       'larger than' if max(sem(steered_ratio(t, p)[1]) for p in ('tcp', 'udp')) > 0.035 else
       'about as large as'))
    if 'steered, 2 bindings' in udp:
        out.append(attribution(t))
    return ''.join(out)


def sem(values):
    """Standard error of a median of per-round ratios (1.25 sigma / sqrt n)."""
    import statistics
    if not values or len(values) < 3:
        return 0.0
    return 1.2533 * statistics.stdev(values) / len(values) ** 0.5


def attribution(t):
    """What the extra modes show, per protocol, stated only beyond the noise."""
    out = ['\n*Where the difference comes from*, per protocol (median per-round ratio ± its standard error):\n\n']
    for proto in ('tcp', 'udp'):
        big, big_rounds, base = steered_ratio(t, proto)
        small, small_rounds, _ = steered_ratio(t, proto, 'steered, 2 bindings')
        e_big, e_small = sem(big_rounds), sem(small_rounds)
        passthrough = t[proto]['passthrough']
        s = '* %s, against *%s*: steered %s ± %.1f with %s bindings, %s ± %.1f with 2; passthrough %s ± %.1f ' \
            'against *direct*. ' % (proto.upper(), base, pct(big), e_big * 100, n(t['bindings']), pct(small),
                                    e_small * 100, pct(passthrough['ratio_per_round_median']),
                                    sem(passthrough['ratio_per_round']) * 100)
        if big >= 0.97:
            s += 'Within the target.'
        elif big + e_big >= 0.97:
            s += 'Below the target by less than the uncertainty of the measurement on this machine.'
        else:
            s += 'Below the target by more than the uncertainty of the measurement.'
        noise = 1.5 * max(e_big, e_small)
        if abs(small - big) <= noise:
            s += ' %s and 2 bindings do not differ by more than the noise.' % n(t['bindings'])
        else:
            s += ' %s bindings are %s than 2 by more than the noise (%.1f points).' % (
                n(t['bindings']), 'slower' if big < small else 'faster', abs(small - big) * 100)
        out.append(s + '\n')
    return ''.join(out)


def alternatives_section(a):
    lines = ['## 3. One service on all 65,535 ports: the alternatives\n', meta_line(a)]
    lines.append('''**Method.** `bench/b3_alternatives.py`. One TCP service answering on every port 1–65535 of an
address, four ways, each in its own server namespace joined to one client namespace by a veth pair
(a client in another namespace is what a remote client looks like, and TPROXY only acts on packets
that arrive through an interface):

* **sockets**: one listening socket per port. This machine caps `RLIMIT_NOFILE` at 20,000 (no
  `CAP_SYS_RESOURCE`), so four processes hold 16,384 ports each, as a pre-forked server would.
* **tproxy**: `nft` rule `tcp dport 1-65535 tproxy to :7000` plus the usual `fwmark` policy route,
  one `IP_TRANSPARENT` listening socket.
* **dispatcher**: the dispatch program, one binding `tcp <address>/32 port 0`, one listening socket
  on 127.0.0.1:7000 registered with `sk_lookup_socket`.
* **one port**: a plain listener on a single port, for reference.

*Setup* is the wall time until the service answers on every port. *Memory* is the server processes'
memory cgroup (user pages plus the kernel's socket, file and epoll objects, which are charged
there); *config* is what the steering itself holds in the kernel: the nftables objects (charged to
the memory cgroup `nft` ran in; an upper bound, as it also holds page cache `nft` read first) or the
dispatcher's BPF maps (the kernel's `memlock` accounting in fdinfo; the program's JIT image, a few
KiB, is not counted). *Latency*: connect, 1 byte each way, close, one connection at a time to a random port
(%s connections per round, %d rounds, interleaved), median of the per-round p50 and p99.
''' % (n(a['connections_per_round']), a['rounds']))
    rows = []
    for name in ('sockets', 'tproxy', 'dispatcher', 'one port'):
        r = a['alternatives'][name]
        lat = r['latency']
        rows.append([name, n(r['sockets']), f2(r['setup_s']) + ' s', mib(r['memory_bytes']),
                     mib(r.get('config_memory_bytes')) if r.get('config_memory_bytes') is not None else '-',
                     f1(lat['p50_us']), f1(lat['p99_us']), n(int(lat['rate'])), n(lat['errors'])])
    lines.append(table(['alternative', 'sockets', 'setup', 'memory (processes)', 'config (kernel)',
                        'p50 µs', 'p99 µs', 'conn/s (1 at a time)', 'errors'], rows))
    lines.append('\nSetup in detail:\n')
    for name in ('sockets', 'tproxy', 'dispatcher'):
        det = a['alternatives'][name].get('setup_detail', {})
        lines.append('* %s: %s' % (name, '; '.join('%s %.3f s' % (k, v) for k, v in det.items())))
    d = a['alternatives']
    lines.append('''
*Reading it.* Per-port sockets cost %s for 65,535 ports (about %.1f KiB per port) and %.2f s to
open, against %s for one socket plus %s of maps for the dispatcher. TPROXY is the cheapest to set
up (one `nft -f`) and holds little memory, but it needs `IP_TRANSPARENT` in the service and a
policy route, and only sees traffic that arrives through an interface (not local clients). The
dispatcher's setup is dominated by Ansible and the BCC compile of the program (the first task), a
one-time cost per host; changing what is steered afterwards is one map update (%.0f ms including
the 50 ms grace of the table flip). Median connection latency is %.0f–%.0f µs for all four, within
the noise of this machine: each way of steering adds at most a lookup of well under a microsecond
to a connection that costs tens of microseconds here; the p99 column moves from run to run with
the machine's other load.
''' % (mib(d['sockets']['memory_bytes']), d['sockets']['memory_bytes'] / 65535.0 / 1024,
       d['sockets']['setup_s'], mib(d['dispatcher']['memory_bytes']),
       mib(d['dispatcher'].get('config_memory_bytes')),
       1000 * d['dispatcher']['setup_detail'].get(
           'one binding replacement without Ansible (incl. 50 ms flip grace)', 0),
       min(x['latency']['p50_us'] for x in d.values()), max(x['latency']['p50_us'] for x in d.values())))
    return '\n'.join(lines)


RESULT_MODES = ('bindings + changes', 'changes', 'counts')


def control_rows(ctl):
    """Section 4's rows, each with its `result` mode. Results from before `return_changes` have only
    `return_bindings`; their module and role rows returned the change lists."""
    out = []
    for r in (ctl or {}).get('rows') or []:
        if 'result' not in r:
            r = dict(r, result='-' if r['kind'] == 'backend' else
                     RESULT_MODES[0] if r.get('return_bindings') else RESULT_MODES[1])
        out.append(r)
    return out


def headline_size(rows, result='counts'):
    """The largest set the bare module (json form) applied, left alone and changed in this result
    mode: 100,000 in a full run, 1,000 in a quick one; None if there is none."""
    sizes = [r['n'] for r in rows if (r['kind'], r['form'], r['result'], r['case']) == (
        'module', 'json', result, 'change 1') and not r.get('skipped')]
    return max(sizes) if sizes else None


def module_row(rows, result, size, case='apply'):
    """The bare module's row (json form) for this result mode, set size and case."""
    return _find(rows, kind='module', form='json', result=result, n=size, case=case)


def secs(r):
    return '%s s' % f1(r['wall_s'])


def control_section(ctl):
    lines = ['## 4. Control plane: applying bindings\n', meta_line(ctl)]
    lines.append('''**Method.** `bench/b4_control_plane.py`. Wall time of one `ansible-playbook` run on localhost
(`ansible_connection: local`), which is what an operator waits for, and in brackets the task's own
time from the benchmark's callback (`tests/integration/callback_plugins/results_json.py`, task start to result;
the rest is Ansible starting up and loading the play and vars). The set comes from a JSON extra-vars
file (`-e @wanted.json`) and is applied with `exclusive: true`. *apply*: into an empty instance;
*no-op*: the same set again (checked: `changed: false`); *change 1*: the same set with one binding
relabelled. Forms: *json* `bindings: "{{ wanted | to_json }}"`, *list* `bindings: "{{ wanted }}"`.
*result*: what the task returns. *bindings + changes*: `return_bindings: true` (every binding of the
instance) and the change lists `added`, `removed`, `changed_labels` (on a first apply `added` is the
whole set); *changes*: `return_bindings: false`, the lists still there; *counts*: `return_bindings:
false` and `return_changes: false`, only `count` and `summary` (the number added, removed and
relabelled). Every run checks that the result holds what its mode says and that `summary` has the
expected counts.
*role*: `bpfsteer.sk_lookup.dispatcher` with `dispatcher_install_dependencies: false`, the whole
role (argument validation, render, kernel checks, program no-op, bindings, sockets; task time = its
bindings task, which always has `return_bindings: false`; *counts* = `dispatcher_return_changes:
false`), given the set either as data (*data*: `dispatcher_bindings` itself in the vars file,
as group_vars would give it) or through a template string (*template*: the play sets
`dispatcher_bindings: "{{ wanted }}"`). *backend*: `Dispatcher.replace_bindings` called in-process,
without Ansible: the floor. *task result*: size of the task's JSON result as the controller got it;
up to 1,000 bindings that includes the module's echo of its arguments (`invocation`, the set
itself), above that only their number.
Bindings: host prefixes in 198.18.0.0/15 and 2001:2::/48, tcp/udp, 6 ports, 8 labels.
''')
    rows = []
    for r in control_rows(ctl):
        if r.get('skipped'):
            rows.append([r['kind'], r['form'], r['result'], n(r['n']), r['case'], 'not run: ' + r['skipped'],
                         '-', '-', '-'])
            continue
        wall = '%s s' % f2(r['wall_s'])
        if r.get('task_s') is not None:
            wall += ' (%s s)' % f2(r['task_s'])
        rng = '%s – %s' % (f2(r.get('wall_min')), f2(r.get('wall_max'))) if r.get('runs', 1) > 1 else '-'
        size = mib(r['result_bytes']) if r.get('result_bytes') else '-'
        rows.append([r['kind'], r['form'], r['result'], n(r['n']), r['case'], wall, '%d' % r.get('runs', 1), rng,
                     size])
    lines.append(table(['through', 'form', 'result', 'bindings', 'case', 'wall (task)', 'runs', 'range',
                        'task result'], rows))
    lines.append(control_explanation(ctl))
    return '\n'.join(lines)


def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and not r.get('skipped'):
            return r
    return None


def control_explanation(ctl):
    rows = control_rows(ctl)
    out = ['\n']
    big = headline_size(rows)
    if big is None:
        out.append('* No counts-only rows in these results (they come from before `return_changes`); '
                   '`bench/run control` measures them.\n')
        return ''.join(out)

    def get(kind, case, result='counts', form='json', size=big):
        return _find(rows, kind=kind, form=form, result=result, n=size, case=case)
    k, kz, kc = (get('module', case) for case in ('apply', 'no-op', 'change 1'))
    j, jz, jc = (get('module', case, 'changes') for case in ('apply', 'no-op', 'change 1'))
    tz, ta = get('module', 'no-op', RESULT_MODES[0]), get('module', 'apply', RESULT_MODES[0])
    lst = get('module', 'apply', 'changes', 'list')
    r, rz, rj = get('role', 'apply', form='data'), get('role', 'no-op', form='data'), \
        get('role', 'apply', 'changes', 'data')
    rt, rdz = get('role', 'no-op', 'changes', 'template'), get('role', 'no-op', 'changes', 'data')
    b, bz = _find(rows, kind='backend', n=big, case='apply'), _find(rows, kind='backend', n=big, case='no-op')
    out.append('* **With counts only (`return_bindings: false`, `return_changes: false`), %s bindings take %s '
               'to apply and %s for a no-op** (one change %s; results %s, %s, %s)%s.'
               % (n(big), secs(k), secs(kz), secs(kc), mib(k.get('result_bytes')), mib(kz.get('result_bytes')),
                  mib(kc.get('result_bytes')),
                  '; the same replacement in-process takes %s (no-op %s), the rest is Ansible' % (secs(b), secs(bz))
                  if b and bz else ''))
    if j and jz and jc:
        out.append(' With the change lists (`return_changes: true`, the default) the first apply takes %s and '
                   'returns %s, as `added` lists every binding; a no-op takes %s and one change %s there '
                   '(their lists are empty or one entry long).'
                   % (secs(j), mib(j.get('result_bytes')), secs(jz), secs(jc)))
    out.append('\n')
    if tz and ta:
        out.append('* `return_bindings: true` (the default) adds every binding of the instance to the result: '
                   'at %s bindings a no-op takes %s instead of %s with counts only (result %s instead of %s), '
                   'a first apply %s (result %s: the set twice, in `bindings` and in `added`). Use `false` for '
                   'large sets.\n' % (n(big), secs(tz), secs(kz), mib(tz.get('result_bytes')),
                                      mib(kz.get('result_bytes')), secs(ta), mib(ta.get('result_bytes'))))
    if j and lst:
        out.append('* The list form (`bindings: "{{ wanted }}"`) costs %.1f× the JSON-string form at %s '
                   'bindings (%s vs %s to apply, both with the change lists): Ansible renders the template of a '
                   '%s-dict list on the controller before the module sees it.\n'
                   % (lst['wall_s'] / j['wall_s'], n(big), secs(lst), secs(j), n(big)))
    if r and rz:
        out.append('* Through the role with the set as data and `dispatcher_return_changes: false`, %s bindings '
                   'take %s to apply and %s for a no-op, against %s and %s for the bare module with counts '
                   'only; the rest is the role\'s other tasks and checking the set on the controller.%s\n'
                   % (n(big), secs(r), secs(rz), secs(k), secs(kz),
                      ' With the change lists the role\'s apply takes %s (result %s).' % (
                          secs(rj), mib(rj.get('result_bytes'))) if rj else ''))
    if rt and rdz:
        ratio = rt['wall_s'] / rdz['wall_s']
        slow = rt.get('role_slowest_tasks') or []
        out.append('* %s: a no-op of %s bindings with `dispatcher_bindings: "{{ wanted }}"` takes %s against '
                   '%s with the same set as data. Every task that reads `dispatcher_bindings` renders the '
                   'template again; the slowest tasks of that run: %s. README.md (*Large sets*) and the role\'s '
                   'argument spec say to give the set as data (group_vars, host_vars, a vars file), not as '
                   '`"{{ other_var }}"`.\n'
                   % ('**The role given its set through a template string is %.0f× slower**' % ratio
                      if ratio >= 2 else 'The role given its set through a template string',
                      n(big), secs(rt), secs(rdz),
                      '; '.join('%s %.1f s' % (t['task'].split(' : ', 1)[-1][:60], t['seconds']) for t in slow[:3])))
    for size in sorted(set(x['n'] for x in rows if x['n'] > big and x['kind'] == 'module')):
        m, mz = get('module', 'apply', size=size), get('module', 'no-op', size=size)
        mj = get('module', 'apply', 'changes', size=size)
        bm, bmz = (_find(rows, kind='backend', n=size, case=case) for case in ('apply', 'no-op'))
        if not (m and mz):
            continue
        out.append('* %s bindings in one call, counts only: apply %s (result %s), no-op %s%s%s.\n'
                   % (n(size), secs(m), mib(m.get('result_bytes')), secs(mz),
                      '; with the change lists the apply takes %s (result %s)' % (secs(mj), mib(mj.get('result_bytes')))
                      if mj else '',
                      '; in-process: apply %s (parse %s s), no-op %s of which %s s reading the active '
                      'table back from the kernel' % (
                          secs(bm), f1(bm['detail']['parse']), secs(bmz),
                          f1(bmz['detail']['read the active table (Dispatcher.bindings)']))
                      if bm and bmz and bmz.get('detail') else ''))
    return ''.join(out)


def program_section(p):
    lines = ['## 5. Program load\n', meta_line(p)]
    lines.append('''**Method.** `bench/b5_program.py`. Wall time of one `ansible-playbook` run with one
`sk_lookup_program` task (`content:` the rendered default template) and the task's own time; median
of %d runs. *first load*: a fresh instance (compile with BCC, create and pin the maps, verify, load,
attach); *rerun*: the same source again, checked to report `compiled: false`, `action: none`;
*upgrade*: a source differing by a comment (compile, load, one `BPF_LINK_UPDATE`, maps kept).
Peak memory of the compile: peak RSS (`wait4` `ru_maxrss`) of a `/usr/bin/python3` process that
imports the collection's compiler and compiles the source, as the module does in its own process;
next to it the same process without the compile, and the largest single process of a whole
`ansible-playbook` first load.
''' % p['runs'])
    rows = [[r['case'], f2(r['wall_s']) + ' s', f2(r['task_s']) + ' s', '%s – %s' % (f2(r['min']), f2(r['max']))]
            for r in p['rows']]
    lines.append(table(['case', 'wall', 'task', 'range (wall)'], rows))
    lines.append('''
* Compile alone: %s s; peak RSS of the compiling process %s (%s without the compile: the LLVM/clang
  inside BCC accounts for the difference). Largest process of a whole first load through
  `ansible-playbook`: %s.
* The unchanged rerun does not compile (checked on every run): the module compares the sha256 of the
  source with the one kept in the instance's `meta` map, so a rerun costs one Ansible task.
''' % (f2(p['compile_only_s']), mib(p['compile_peak_rss_bytes']), mib(p['import_only_peak_rss_bytes']),
       mib(p['playbook_largest_process_rss_bytes'])))
    return '\n'.join(lines)


def fleet_section(fl, results_program=None):
    lines = ['## 6. Fleet\n', meta_line(fl)]
    if fl.get('skipped'):
        lines.append('Not run: %s. The benchmark (`bench/b6_fleet.py`) is written against the role\'s '
                     'documented variables and runs once they exist.\n' % fl['skipped'])
        return '\n'.join(lines)
    lines.append('''**Method.** `bench/b6_fleet.py`. `playbooks/site.yml` over a simulated fleet built by the
benchmark: each host a network namespace with its own dispatcher instance (`ansible_connection:
local`, per-host `dispatcher_netns`, `dispatcher_instance`, one private `dispatcher_bpffs`), 10
bindings and one running TCP server registered through `dispatcher_sockets` per host,
`dispatcher_install_dependencies: false`. *converge*: the first run (each host renders and compiles
its program, applies its bindings, registers its socket; checked: every host changed); *no-op*: the
same again (checked: no host changed). Ansible's default 5 forks; the 50-host fleet also with 10.
''')
    rows = [[n(r['hosts']), r['forks'], f1(r['converge_s']) + ' s', f2(r['converge_per_host_s']) + ' s',
             f1(r['noop_s']) + ' s', f2(r['noop_per_host_s']) + ' s'] for r in fl['rows']]
    lines.append(table(['hosts', 'forks', 'converge', 'per host', 'no-op rerun', 'per host'], rows))
    lines.append(fleet_explanation(fl, results_program))
    return '\n'.join(lines)


def fleet_explanation(fl, p):
    rows = fl['rows']
    big = max(rows, key=lambda r: (r['hosts'], -r['forks']))
    extra = big['converge_s'] - big['noop_s']
    compile_s = p.get('compile_only_s') if p and not p.get('error') else None
    by_forks = dict((r['forks'], r) for r in rows if r['hosts'] == big['hosts'])
    out = ['''
*Reading it.* For %d hosts the converge takes %s s more than the no-op, %.2f s per host%s. The no-op
is the role's tasks run through Ansible for every host, which read the kernel's state and change
nothing: %.2f s per host, mostly Ansible's own cost per task.''' % (
        big['hosts'], f1(extra), extra / big['hosts'],
        ', about the time of one compile per host (%.2f s alone, section 5)' % compile_s
        if compile_s else '', big['noop_per_host_s'])]
    if 5 in by_forks and 10 in by_forks:
        out.append(' Ten forks instead of five change little (converge %s s vs %s s): every "host" runs on '
                   'the same 2 cores here; on a real fleet each host compiles on its own CPU.'
                   % (f1(by_forks[10]['converge_s']), f1(by_forks[5]['converge_s'])))
    return ''.join(out) + '\n'


def summary(results):
    rows = []
    d, t, a, ctl, p, fl = (results.get(k) for k in
                           ('dispatch', 'throughput', 'alternatives', 'control', 'program', 'fleet'))
    if d and not d.get('error'):
        verdict, figs, lo, top, big = dispatch_target(d)
        if lo is not None:
            base = d['baseline_ns']
            g = dict((case, fig[big]) for case, _l, fig, _r in figs)
            rows.append(['1. dispatch cost', 'well under 100 ns/lookup at 100,000 bindings, flat',
                         'at %s, gross (net of test_run\'s loop): %s%s' % (
                             n(big), ', '.join('%s %d (%d) ns' % (case, g[case], g[case] - base) for case in CASES),
                             '; %s ÷ %s: %s' % (n(top), n(lo), span([r for _c, _l, _g, r in figs], '%.2f'))
                             if top != lo else ''),
                         verdict])
    if t and not t.get('error'):
        tr, ur = steered_ratio(t, 'tcp')[0], steered_ratio(t, 'udp')[0]
        v = throughput_verdict(t)
        rows.append(['2. throughput', 'steered at most 3 % slower than the server bound directly',
                     'TCP %s ± %.1f, UDP %s ± %.1f' % (pct(tr), sem(steered_ratio(t, 'tcp')[1]) * 100, pct(ur),
                                                     sem(steered_ratio(t, 'udp')[1]) * 100),
                     v if v == 'met' else '**%s**' % v.split(':')[0]])
    if a and not a.get('error'):
        x = a['alternatives']
        rows.append(['3. alternatives', '(comparison)', 'memory: sockets %s, tproxy %s + %s, dispatcher %s + %s'
                     % (mib(x['sockets']['memory_bytes']), mib(x['tproxy']['memory_bytes']),
                        mib(x['tproxy'].get('config_memory_bytes')), mib(x['dispatcher']['memory_bytes']),
                        mib(x['dispatcher'].get('config_memory_bytes'))), '-'])
    if ctl and not ctl.get('error'):
        crows = control_rows(ctl)
        big = headline_size(crows)
        if big:
            k, kz, j = (module_row(crows, 'counts', big), module_row(crows, 'counts', big, 'no-op'),
                        module_row(crows, 'changes', big))
            rows.append(['4. control plane', '(report)', '%s bindings, counts only (`return_changes: false`): '
                         'apply %s, no-op %s%s' % (n(big), secs(k), secs(kz), '; with the change lists: apply %s, '
                                                   'result %s' % (secs(j), mib(j.get('result_bytes'))) if j else ''),
                         '-'])
    if p and not p.get('error'):
        rr = next(r for r in p['rows'] if r['case'] == 'rerun')
        fl1 = next(r for r in p['rows'] if r['case'] == 'first load')
        rows.append(['5. program load', 'unchanged rerun must not compile', 'first load %s s, rerun %s s, '
                     'no compile on rerun' % (f1(fl1['wall_s']), f1(rr['wall_s'])), 'met'])
    if fl and not fl.get('error'):
        if fl.get('skipped'):
            rows.append(['6. fleet', '(report)', 'not run: ' + fl['skipped'], '-'])
        else:
            rows.append(['6. fleet', '(report)', '; '.join('%d hosts/%d forks: converge %s s, no-op %s s' % (
                r['hosts'], r['forks'], f1(r['converge_s']), f1(r['noop_s'])) for r in fl['rows']), '-'])
    return table(['benchmark', 'target', 'result', ''], rows)


def machine_section(m):
    return table(['', ''], [
        ['date (of the latest run)', m['date']],
        ['CPU', '%d × %s' % (m['cpus'], m['cpu_model'])],
        ['memory', '%s GiB' % m['memory_gib']],
        ['kernel', '%s (%s)' % (m['kernel'], m['kernel_version'])],
        ['OS', m['os']],
        ['ansible-core', m['ansible_core']],
        ['BCC (python3-bpfcc)', m['bcc']],
        ['libbpf (libbpf1)', m['libbpf']],
        ['nftables', m['nftables']],
        ['gcc', m['gcc']],
        ['Python', m['python']],
        ['load average at start', ' '.join(m['loadavg'])],
    ])


def findings(results):
    """Problems the benchmarks ran into in code they do not own, with the evidence."""
    out = ['## Findings outside bench/\n']
    d = results.get('dispatch') or {}
    rf = d.get('replace_into_full')
    if rf:
        if rf['ok']:
            out.append('* Replacing %s bindings with %s in one call worked this time (max_bindings %s).\n'
                       % (n(rf['from']), n(rf['to']), n(rf['max_bindings'])))
        else:
            out.append('''* **Replacing a large set with another one fails when both together exceed max_bindings.**
  `Dispatcher._sync_table` (`plugins/module_utils/dispatcher.py`) writes the new and changed keys
  into the idle table first and deletes the stale ones afterwards, so for a moment the table must
  hold the old and the new set together. Measured: replacing %s bindings with a different set of
  %s in an instance with `max_bindings` %s failed with `%s`; the active table was %s (no traffic
  was affected, the call failed). Both tables `_sync_table` touches are idle at that point (the
  program reads the other one), so deleting the stale keys first is safe: in `_sync_table`, call
  `bpf.map_delete_batch(fd, stale, ...)` before `bpf.map_update_batch(fd, write_keys, ...)`. The
  module's check `len(change.desired) > disp.max_bindings` then holds for every call it lets through.
''' % (n(rf['from']), n(rf['to']), n(rf['max_bindings']), rf.get('error', '').split(': ', 1)[-1],
                        'left unchanged' if rf.get('active_unchanged') else 'CHANGED'))
    rows = control_rows(results.get('control'))
    big = headline_size(rows)
    k, j = module_row(rows, 'counts', big), module_row(rows, 'changes', big)
    if k and j:
        bigger = [(module_row(rows, 'counts', size), module_row(rows, 'changes', size))
                  for size in sorted(set(r['n'] for r in rows)) if size > big]
        more = ''.join('; at %s, %s instead of %s (result %s instead of %s)' % (
            n(km['n']), secs(km), secs(jm), mib(km.get('result_bytes')), mib(jm.get('result_bytes')))
            for km, jm in bigger if km and jm)
        out.append('''* **Done: `sk_lookup_binding` can leave out the change lists (`return_changes`).** A first apply
  returned every added binding in `added` even with `return_bindings: false`, a result as large as the
  set. The module now has `return_changes` (default `true`); with `false` it leaves out `added`,
  `removed` and `changed_labels`, and `summary` (always returned) counts them. The role passes it as
  `dispatcher_return_changes`, and README.md (*Large sets*) recommends it for large sets. Measured:
  a first apply of %s bindings takes %s with a result of %s, against %s and %s with the lists%s.
''' % (n(big), secs(k), mib(k.get('result_bytes')), secs(j), mib(j.get('result_bytes')), more))
    rt = _find(rows, kind='role', form='template', n=big, case='no-op')
    rd = _find(rows, kind='role', form='data', result='changes', n=big, case='no-op')
    if rt and rd and rt['wall_s'] > 3 * rd['wall_s']:
        out.append('''* **The role is slow when `dispatcher_bindings` is a template string.** A no-op of %s
  bindings takes %s with `dispatcher_bindings: "{{ wanted }}"` and %s with the list itself as the
  variable. The role's argument validation and its "Validate the bindings and render" `set_fact` each
  render the template again. Nothing to fix in code: `README.md` (*Large sets* and the
  `dispatcher_bindings` row) and the role's argument spec now say to give the set as data (inventory,
  group_vars, a vars file), not as a Jinja2 expression in a string.
''' % (n(big), secs(rt), secs(rd)))
    if len(out) == 1:
        out.append('None in this run.\n')
    return '\n'.join(out)


SECTIONS = [('dispatch', '1. Dispatch cost per lookup', None),
            ('throughput', '2. Throughput', None), ('alternatives', '3. Alternatives', None),
            ('control', '4. Control plane', None), ('program', '5. Program load', None),
            ('fleet', '6. Fleet', None)]


def write(results_dir, output, quick=False):
    results = dict((name, load(results_dir, name)) for name, _t, _f in SECTIONS)
    machine = load(results_dir, 'machine')
    parts = ['# Benchmarks\n']
    parts.append('''Written by `bench/run`%s; do not edit by hand, run it again. Every figure is a median of
several runs on the machine below, which is shared with other work and noisy: compare figures
within one table (taken in the same run, interleaved), and read ranges where they are given.
Benchmarks are not part of the test command.
''' % (' --quick (a smoke run: small sizes, few runs; not for quoting)' if quick else ''))
    parts.append('## Summary\n\n' + summary(results))
    if machine:
        parts.append('## Machine\n\n' + machine_section(machine))
    renderers = {'dispatch': dispatch_section,
                 'throughput': lambda t: throughput_section(t, results.get('dispatch')),
                 'alternatives': alternatives_section,
                 'control': control_section, 'program': program_section,
                 'fleet': lambda x: fleet_section(x, results.get('program'))}
    for name, title, _ in SECTIONS:
        text, data = failed(results[name], title, name)
        if text is None:
            try:
                text = renderers[name](data)
            except Exception as exc:  # pylint: disable=broad-except
                text = '## %s\n\nThe results could not be rendered: %r\n' % (title, exc)
        parts.append(text)
    parts.append(findings(results))
    parts.append('''## How to run

```sh
bench/run                       # everything, about 20 minutes; writes BENCHMARKS.md
bench/run --quick               # smoke run, about 2 minutes; writes bench/out/BENCHMARKS.quick.md
bench/run dispatch throughput   # only these; the other sections keep their last results
bench/run --list                # names: dispatch throughput alternatives control program fleet
```

As root on a Debian 12 machine. `bench/run` installs what it needs (`scripts/bootstrap`, then
`nftables` and `gcc`), builds `bench/loadgen.c`, and every benchmark creates its own network
namespaces (`bpfsteer-bench-*`), bpffs mounts and memory cgroups and removes them afterwards, also
on failure or Ctrl-C; a run killed hard is cleaned up by the next one. Traffic goes only to
loopback and to addresses inside those namespaces (198.18.0.0/15, the benchmarking range). A run's
raw figures are in `bench/results/*.json` (not committed); `.venv/bin/python bench/bench.py
--report-only` renders this file from them again.
''')
    with open(output, 'w') as f:
        f.write('\n'.join(p.rstrip('\n') + '\n' for p in parts))
