"""sk_lookup_binding: precedence with real traffic, replacement under load, check/diff, errors."""

import ipaddress
import os
import subprocess
import tempfile

import pytest

import harness
from harness import run_module, run_playbook, play, module_task, Server, pin_dir

V4_LOCAL = '10.0.0.0/16'        # routed to lo inside the namespace
V6_LOCAL = '2001:db8::/64'


def v6(prefix):
    """The IPv6 twin of a 10.0.0.x prefix used in the table: 10.0.0.7/32 -> 2001:db8::7/128."""
    net = ipaddress.ip_network(prefix, strict=False)
    host = int(net.network_address) - int(ipaddress.ip_address('10.0.0.0'))
    return '%s/%d' % (ipaddress.ip_address(int(ipaddress.ip_address('2001:db8::')) + host), net.prefixlen + 96)


def v6addr(addr):
    return v6(addr + '/32').split('/')[0]


@pytest.fixture(scope='module')
def world():
    """One namespace, one dispatcher and servers a/b per (family, protocol), plus normal listeners."""
    ns = harness.Namespace()
    tmp = tempfile.mkdtemp(prefix='bpfsteer-bpffs-')
    bpffs = os.path.join(tmp, 'bpf')
    servers = []
    try:
        ns.add_local_route(V4_LOCAL)
        ns.add_local_route(V6_LOCAL)
        target = {'instance': 'table', 'bpffs': bpffs, 'netns': ns.path}
        run_module('sk_lookup_program', dict(target, content=harness.render_dispatch()))
        pins = pin_dir(target)
        for label in ('a', 'b'):
            for proto in ('tcp', 'udp'):
                servers.append(Server(ns, label, proto, '127.0.0.1', register=(pins, label)))
                servers.append(Server(ns, label, proto, '::1', register=(pins, label)))
        # the normal (bind-based) listeners catch what the dispatcher passes
        for proto in ('tcp', 'udp'):
            for port in (81, 90, 5555):
                servers.append(Server(ns, 'normal', proto, '0.0.0.0', port))
                servers.append(Server(ns, 'normal', proto, '::', port))
        yield ns, target
    finally:
        for s in servers:
            s.stop()
        ns.delete()
        subprocess.run(['umount', bpffs], check=False)
        os.rmdir(bpffs) if os.path.isdir(bpffs) else None
        os.rmdir(tmp)


def apply(target, entries, **kw):
    args = dict(instance=target['instance'], bpffs=target['bpffs'], bindings=entries, exclusive=True)
    args.update(kw)
    return run_module('sk_lookup_binding', args)


# (bindings as (label, 10.0.0.x prefix, port), probes as (address, port, expected answer)).
# 'dropped': SK_DROP fails the lookup with ECONNREFUSED, so TCP is reset (refused) and UDP
# gets an ICMP unreachable, which an unconnected client only sees as silence.
DROPPED = {'tcp': 'refused', 'udp': 'timeout'}
TABLE = [
    ('/24 port 0 against /24 port 443',
     [('a', '10.0.0.0/24', 0), ('b', '10.0.0.0/24', 443)],
     [('10.0.0.1', 443, 'b'), ('10.0.0.1', 80, 'a')]),
    ('/32 port 0 beats /24 port 80',
     [('a', '10.0.0.7/32', 0), ('b', '10.0.0.0/24', 80)],
     [('10.0.0.7', 80, 'a'), ('10.0.0.8', 80, 'b')]),
    ('/25 against /24 on the same port',
     [('a', '10.0.0.0/25', 80), ('b', '10.0.0.0/24', 80)],
     [('10.0.0.1', 80, 'a'), ('10.0.0.200', 80, 'b')]),
    ('port 0 on a prefix catches every port',
     [('a', '10.0.0.0/24', 0)],
     [('10.0.0.1', 1, 'a'), ('10.0.0.99', 12345, 'a'), ('10.0.0.255', 65535, 'a')]),
    ('unmatched address or port reaches the normal listener',
     [('a', '10.0.0.0/24', 80)],
     [('10.0.0.1', 80, 'a'), ('10.0.0.1', 81, 'normal'), ('10.0.5.1', 81, 'normal')]),
    ('matched binding without a socket is dropped',
     [('ghost', '10.0.0.0/24', 90)],
     [('10.0.0.1', 90, 'dropped')]),
]


@pytest.mark.parametrize('name, entries, probes', TABLE, ids=[row[0] for row in TABLE])
def test_precedence_table(world, name, entries, probes):
    ns, target = world
    bindings = []
    for label, prefix, port in entries:
        for proto in ('tcp', 'udp'):
            bindings.append({'label': label, 'protocol': proto, 'prefix': prefix, 'port': port})
            bindings.append({'label': label, 'protocol': proto, 'prefix': v6(prefix), 'port': port})
    apply(target, bindings)
    cases, expected = [], []
    for addr, port, answer in probes:
        for proto in ('tcp', 'udp'):
            for host in (addr, v6addr(addr)):
                cases.append((proto, host, port))
                expected.append(DROPPED[proto] if answer == 'dropped' else answer)
    answers = harness.probe_many(ns, cases)
    got = [answers[c] for c in cases]
    assert got == expected, [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]


def test_ipv6_any_never_catches_ipv4(world):
    ns, target = world
    # UDP on one port only: ::/0 on every port would also capture the reply to our client.
    apply(target, [{'label': 'a', 'protocol': 'tcp', 'prefix': '::/0', 'port': 0},
                   {'label': 'a', 'protocol': 'udp', 'prefix': '::/0', 'port': 5555}])
    cases = [('tcp', '10.0.0.1', 81), ('udp', '10.0.0.1', 5555), ('tcp', '127.0.0.1', 5555),
             ('tcp', '2001:db8::1', 81), ('udp', '::1', 5555)]
    answers = harness.probe_many(ns, cases)
    assert [answers[c] for c in cases] == ['normal', 'normal', 'normal', 'a', 'a']


def _common_bits(a, b):
    x, y = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
    bits = 32 if ipaddress.ip_address(a).version == 4 else 128
    return bits - (x ^ y).bit_length()


EVERY_LENGTH_PROBES = ['10.0.0.77', '10.0.0.76', '10.0.0.79', '10.0.0.69', '10.0.0.93', '10.0.1.77', '10.0.255.1',
                       '127.0.0.1', '192.0.2.1', '2001:db8::77', '2001:db8::76', '2001:db8::79', '2001:db8::69',
                       '2001:db8::5d', '2001:db8::1:77', '2001:db8::8000:0:0:77', '::1', 'fd00::1']


@pytest.mark.parametrize('lengths4, lengths6, lookup', [
    (range(33), range(129), 'trie'),
    ([32, 30, 28, 27, 16, 0], [128, 124, 123, 122, 111, 0], 'hash'),
], ids=['every length (trie)', 'six lengths (hash)'])
def test_longest_prefix_wins_at_every_length(world, lengths4, lengths6, lookup):
    """Bindings on port 5555 around one address at many lengths, labels alternating by length, and
    two on port 0 (/28 -> b and /24 -> a; /124 and /120 for IPv6): an address sharing its first L
    bits with it must reach the label of the longest bound length <= L, the port winning a tie.
    With every length the set goes to the trie; with six (eight hash lookups) it stays hashed."""
    ns, target = world
    import sys
    sys.path.insert(0, harness.COLLECTIONS)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    base4, base6 = '10.0.0.77', '2001:db8::77'
    label = {0: 'a', 1: 'b'}
    entries = []
    for proto in ('tcp', 'udp'):
        for base, lengths, any_port in ((base4, lengths4, ((28, 'b'), (24, 'a'))),
                                        (base6, lengths6, ((124, 'b'), (120, 'a')))):
            entries += [{'label': label[plen % 2], 'protocol': proto, 'prefix': '%s/%d' % (base, plen),
                         'port': 5555} for plen in lengths]
            entries += [{'label': name, 'protocol': proto, 'prefix': '%s/%d' % (base, plen), 'port': 0}
                        for plen, name in any_port]
    apply(target, entries, return_bindings=False)
    ns.ip('-4', 'route', 'replace', 'local', '192.0.2.0/24', 'dev', 'lo')   # first bit differs: only /0
    ns.ip('-6', 'route', 'replace', 'local', 'fd00::/64', 'dev', 'lo')

    assert sorted(set(_common_bits(a, base4 if '.' in a else base6) for a in EVERY_LENGTH_PROBES)) == \
        [0, 1, 2, 16, 23, 27, 28, 30, 31, 32, 64, 111, 122, 123, 124, 127, 128]
    cases = [(proto, addr, 5555) for proto in ('tcp', 'udp') for addr in EVERY_LENGTH_PROBES]
    cases += [(proto, addr, 5556) for proto in ('tcp', 'udp')
              for addr in ('10.0.0.77', '10.0.0.93', '10.0.1.77', '2001:db8::77', '2001:db8::5d', '2001:db8::1:77')]
    parsed = bnd.parse_bindings(entries).values()
    expected = []
    for proto, addr, port in cases:
        chosen = bnd.select(parsed, proto, addr, port)
        expected.append(chosen.label if chosen else ('normal' if port == 5555 else DROPPED[proto]))
    assert set(expected) >= {'a', 'b', DROPPED['tcp']}
    answers = harness.probe_many(ns, cases)
    got = [answers[c] for c in cases]
    assert got == expected, [(c, g, e) for c, g, e in zip(cases, got, expected) if g != e]

    info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
    assert len(info['bindings']) == len(entries)
    assert set((p['protocol'], p['family'], p['lookup']) for p in info['program']['prefix_lengths']) == \
        set((proto, fam, lookup) for proto in ('tcp', 'udp') for fam in ('ipv4', 'ipv6'))
    if lookup == 'hash':
        assert info['program']['table_capacity'] == 64            # 32 bindings fit the smallest table
        assert all(p['hash_probes'] == 8 for p in info['program']['prefix_lengths'])


def test_tables_grow_and_shrink_with_the_set(world):
    ns, target = world
    many = [{'label': 'a', 'protocol': proto, 'prefix': '10.0.%d.%d' % (i // 256, i % 256), 'port': 80}
            for proto in ('tcp', 'udp') for i in range(200)]
    apply(target, many, return_bindings=False)
    info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
    assert info['program']['table_capacity'] == 512      # 400 plus a quarter, rounded up to a power of 2
    answers = harness.probe_many(ns, [('tcp', '10.0.0.199', 80), ('udp', '10.0.0.199', 80), ('tcp', '10.0.0.200', 81)])
    assert list(answers.values()) == ['a', 'a', 'normal']
    apply(target, many[:2])
    info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
    assert len(info['bindings']) == 2 and info['program']['table_capacity'] == 64   # shrunk back
    answers = harness.probe_many(ns, [('tcp', '10.0.0.0', 80), ('tcp', '10.0.0.199', 80)])
    assert list(answers.values()) == ['a', 'refused']


def test_missing_socket_pass_reaches_normal_listener(world):
    ns, target = world
    apply(target, [{'label': 'ghost', 'protocol': p, 'prefix': pre, 'port': 90}
                   for p in ('tcp', 'udp') for pre in ('10.0.0.0/24', v6('10.0.0.0/24'))])
    passing = harness.render_dispatch(missing_socket='pass')
    out = run_module('sk_lookup_program', dict(target, content=passing))
    assert out['action'] == 'upgrade'
    try:
        cases = [(p, h, 90) for p in ('tcp', 'udp') for h in ('10.0.0.1', '2001:db8::1')]
        answers = harness.probe_many(ns, cases)
        assert [answers[c] for c in cases] == ['normal'] * 4
        info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
        ghosts = [d for d in info['destinations'] if d['label'] == 'ghost']
        assert len(ghosts) == 4 and all(d['misses'] >= 1 and d['socket_cookie'] is None for d in ghosts)
    finally:
        run_module('sk_lookup_program', dict(target, content=harness.render_dispatch()))


# --- set replacement under load ---------------------------------------------

def filler(second_octet, count, label):
    return [{'label': label, 'protocol': 'tcp', 'prefix': '10.%d.%d.%d' % (second_octet, i // 256, i % 256),
             'port': 80} for i in range(count)]


def test_exclusive_replacement_under_load_never_misdirects(ns, bpffs):
    """Both sets send 10.0.0.1:80 to label a, through different, overlapping bindings."""
    ns.add_local_route('10.0.0.0/8')
    target = {'instance': 'swap', 'bpffs': bpffs, 'netns': ns.path}
    run_module('sk_lookup_program', dict(target, content=harness.render_dispatch()))
    pins = pin_dir(target)
    old = [{'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.0/16', 'port': 80}] + filler(2, 50000, 'b')
    new = [{'label': 'b', 'protocol': 'tcp', 'prefix': '10.0.0.0/16', 'port': 80},
           {'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.1/32', 'port': 80},
           {'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.0/8', 'port': 0}] + filler(3, 50000, 'b')
    with Server(ns, 'a', register=(pins, 'a')), Server(ns, 'b', register=(pins, 'b')):
        task = module_task('sk_lookup_binding', {'instance': 'swap', 'bpffs': bpffs, 'exclusive': True,
                                                 'bindings': '{{ wanted | to_json }}', 'return_bindings': False})
        run_playbook(play([task]), extra_vars={'wanted': old}, expect_rc=0)
        client = harness.ClientLoop(ns, '10.0.0.1', 80, seconds=5)
        results = []
        for wanted in (new, old):
            res = run_playbook(play([task]), extra_vars={'wanted': wanted}, expect_rc=0).result(0)
            results.append(res)
        counts = client.result()
    assert counts['refused'] == 0 and counts['other'] == 0, counts
    assert counts['seen'] == {'a': counts['ok']} and counts['ok'] > 20, counts
    first = results[0]
    assert first['changed'] and len(first['added']) == 50002 and len(first['removed']) == 50000
    assert first['changed_labels'] == [{'protocol': 'tcp', 'prefix': '10.0.0.0/16', 'port': 80,
                                        'label': 'b', 'old_label': 'a'}]
    assert results[-1]['count'] == 50001 and 'bindings' not in results[-1]
    assert results[-1]['invocation']['module_args']['bindings'] == '<50001 bindings>'


# --- one binding at a time: relabel, absent, four steps, diff ----------------

def test_single_binding_four_steps_relabel_and_absent(loaded, ns):
    pins = pin_dir(loaded)
    base = {'instance': loaded['instance'], 'bpffs': loaded['bpffs']}
    one = dict(base, label='web', protocol='tcp', prefix='127.0.0.1/8', port=8080)
    with Server(ns, 'web', port=0, register=(pins, 'web')), Server(ns, 'api', port=0, register=(pins, 'api')):
        check = run_module('sk_lookup_binding', one, check=True, diff=True)
        assert check['changed'] and check['added'] == [
            {'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 8080, 'label': 'web'}]
        assert check['diff']['before'] == '' and check['diff']['after'] == 'tcp 127.0.0.0/8:8080 -> web\n'
        assert harness.probe(ns, 'tcp', '127.0.0.1', 8080) == 'refused'

        real = run_module('sk_lookup_binding', one, diff=True)
        assert real['changed'] and real['bindings'] == check['bindings'] and real['count'] == 1
        assert harness.probe(ns, 'tcp', '127.0.0.5', 8080) == 'web'
        again = run_module('sk_lookup_binding', one, diff=True)
        assert not again['changed'] and again['added'] == [] and again['diff']['after'] == ''
        assert not run_module('sk_lookup_binding', one, check=True)['changed']

        relabel = run_module('sk_lookup_binding', dict(one, label='api'), diff=True)
        assert relabel['changed'] and relabel['added'] == [] and relabel['changed_labels'] == [
            {'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 8080, 'label': 'api', 'old_label': 'web'}]
        assert relabel['diff']['before'] == 'tcp 127.0.0.0/8:8080 -> web\n'
        assert relabel['diff']['after'] == 'tcp 127.0.0.0/8:8080 -> api\n'
        assert harness.probe(ns, 'tcp', '127.0.0.5', 8080) == 'api'

        # absent with a label it does not have: left alone, with a warning
        wrong = run_module('sk_lookup_binding', dict(one, label='web', state='absent'))
        assert not wrong['changed'] and 'left in place' in ' '.join(wrong['warnings'])
        gone = run_module('sk_lookup_binding', dict(base, protocol='tcp', prefix='127.0.0.0/8', port=8080,
                                                    state='absent'), diff=True)
        assert gone['changed'] and gone['removed'] == relabel['bindings'] and gone['count'] == 0
        assert gone['diff']['before'] == 'tcp 127.0.0.0/8:8080 -> api\n' and gone['diff']['after'] == ''
        assert harness.probe(ns, 'tcp', '127.0.0.5', 8080) == 'refused'
        info = run_module('sk_lookup_info', base)
        # destinations that still have sockets are kept, without bindings
        assert sorted(d['label'] for d in info['destinations']) == ['api', 'web']


def test_set_four_steps_and_merge(loaded):
    base = {'instance': loaded['instance'], 'bpffs': loaded['bpffs']}
    wanted = [{'label': 'dns', 'protocol': 'udp', 'prefix': '192.0.2.0/24', 'port': 53},
              {'label': 'dns', 'protocol': 'udp', 'prefix': '2001:db8::/32', 'port': 53},
              {'label': 'web', 'protocol': 'tcp', 'prefix': '192.0.2.0/24', 'port': 443}]
    args = dict(base, bindings=wanted, exclusive=True)
    steps = run_playbook(play([
        module_task('sk_lookup_binding', args, name='check', check_mode=True, diff=True),
        module_task('sk_lookup_binding', args, name='real', diff=True),
        module_task('sk_lookup_binding', args, name='repeat'),
        module_task('sk_lookup_binding', args, name='repeat check', check_mode=True),
        module_task('sk_lookup_binding', dict(base, bindings=[
            {'label': 'ntp', 'protocol': 'udp', 'prefix': '192.0.2.1', 'port': 123}]), name='merge'),
        module_task('sk_lookup_binding', dict(base, bindings=[{'label': 'ntp2', 'protocol': 'udp', 'prefix': '192.0.2.1',
                                                              'port': 123}], return_changes=False,
                                              return_bindings=False), name='counts only'),
        module_task('sk_lookup_binding', dict(base, bindings=[], exclusive=True), name='clear', diff=True),
    ]), expect_rc=0)
    check, real = steps.by_name('check'), steps.by_name('real')
    assert check['changed'] and real['changed'] and check['added'] == real['added']
    assert check['diff']['after'] == ('tcp 192.0.2.0/24:443 -> web\n'
                                      'udp 192.0.2.0/24:53 -> dns\n'
                                      'udp [2001:db8::/32]:53 -> dns\n')
    assert not steps.by_name('repeat')['changed'] and not steps.by_name('repeat check')['changed']
    assert real['summary'] == {'added': 3, 'removed': 0, 'changed_labels': 0}
    merge = steps.by_name('merge')
    assert merge['changed'] and merge['count'] == 4 and merge['removed'] == []
    # without the lists the counts still say what happened: a relabel of the ntp binding
    counts = steps.by_name('counts only')
    assert counts['changed'] and counts['summary'] == {'added': 0, 'removed': 0, 'changed_labels': 1}
    assert not set(counts) & {'added', 'removed', 'changed_labels', 'bindings'} and counts['count'] == 4
    clear = steps.by_name('clear')
    assert clear['changed'] and len(clear['removed']) == 4 and clear['bindings'] == []
    assert clear['diff']['after'] == '' and clear['diff']['before'].count('\n') == 4


# --- errors: every bad input names the entry and changes nothing ---------------

def state_of(target):
    info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
    return info['bindings'], info['destinations']


BAD = [
    ([{'label': 'ok', 'protocol': 'tcp', 'prefix': '10.0.0.1', 'port': 1},
      {'label': 'bad label', 'protocol': 'tcp', 'prefix': '10.0.0.2', 'port': 1}],
     "bindings[1] label 'bad label' may only contain printable ASCII characters without spaces"),
    ([{'label': 'x', 'protocol': 'icmp', 'prefix': '10.0.0.2', 'port': 1}],
     "bindings[0] protocol must be 'tcp' or 'udp', got 'icmp'"),
    ([{'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.300', 'port': 1}],
     "bindings[0] prefix '10.0.0.300' is not a valid IPv4 or IPv6 prefix"),
    ([{'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.3', 'port': 70000}],
     'bindings[0] port 70000 is out of range 0..65535'),
    ([{'label': 'x', 'protocol': 'tcp', 'prefix': '::ffff:10.0.0.3', 'port': 1}],
     'IPv4-mapped IPv6 prefix'),
    ([{'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.0/8', 'port': 1},
      {'label': 'y', 'protocol': 'tcp', 'prefix': '10.9.9.9/8', 'port': 1}],
     "bindings[1] tcp 10.0.0.0/8:1 -> y conflicts with an earlier entry that sends it to 'x'"),
    ([{'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.3'}],
     'is missing port'),
    ([{'label': 'x' * 64, 'protocol': 'tcp', 'prefix': '10.0.0.3', 'port': 1}],
     'is longer than 63 bytes'),
]


def test_bad_input_changes_nothing(target):
    small = harness.render_dispatch(max_bindings=3, max_destinations=2,
                                    protected=[{'protocol': 'tcp', 'prefix': '10.0.0.0/8', 'port': 22}])
    run_module('sk_lookup_program', dict(target, content=small))
    base = {'instance': target['instance'], 'bpffs': target['bpffs']}
    run_module('sk_lookup_binding', dict(base, label='keep', protocol='tcp', prefix='10.1.1.1', port=80))
    before = state_of(target)
    tasks = [module_task('sk_lookup_binding', dict(base, bindings=entries), name='bad %d' % i,
                         ignore_errors=True) for i, (entries, _msg) in enumerate(BAD)]
    extra = [
        ('protected', dict(base, label='x', protocol='tcp', prefix='10.2.3.4', port=22),
         'tcp 10.2.3.4/32:22 -> x falls under the protected rule tcp 10.0.0.0/8:22'),
        ('room', dict(base, bindings=[{'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.%d' % i, 'port': 1}
                                      for i in range(4)]),
         '5 bindings do not fit: instance \'test\' holds at most 3 (max_bindings); nothing was changed'),
        ('destinations', dict(base, bindings=[{'label': n, 'protocol': 'tcp', 'prefix': '10.0.0.1', 'port': i}
                                              for i, n in enumerate(('p', 'q'))]),
         'need 3 destinations'),
        ('not loaded', dict(base, instance='nothing', label='x', protocol='tcp', prefix='10.0.0.1', port=1),
         "instance 'nothing' is not loaded"),
        ('single bad prefix', dict(base, label='x', protocol='tcp', prefix='nope', port=1),
         "prefix 'nope' is not a valid IPv4 or IPv6 prefix"),
        ('single bad protocol', dict(base, label='x', protocol='sctp', prefix='10.0.0.1', port=1),
         'value of protocol must be one of: tcp, udp, got: sctp'),
        ('exclusive absent', dict(base, bindings=[], exclusive=True, state='absent'),
         'exclusive=true only makes sense with state=present'),
        ('missing label', dict(base, protocol='tcp', prefix='10.0.0.1', port=1), 'label is required'),
    ]
    tasks += [module_task('sk_lookup_binding', args, name=name, ignore_errors=True) for name, args, _m in extra]
    res = run_playbook(play(tasks))
    for i, (_entries, msg) in enumerate(BAD):
        out = res.by_name('bad %d' % i)
        assert out.get('failed') and msg in out['msg'], (msg, out.get('msg'))
    for name, _args, msg in extra:
        out = res.by_name(name)
        assert out.get('failed') and msg in out['msg'], (name, msg, out.get('msg'))
    assert state_of(target) == before


def test_disjoint_replacement_at_full_capacity(target, ns):
    """Old and new sets each fill the table; they never have to fit in it together."""
    run_module('sk_lookup_program', dict(target, content=harness.render_dispatch(max_bindings=4)))
    base = {'instance': target['instance'], 'bpffs': target['bpffs'], 'exclusive': True}
    old = [{'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.%d' % i, 'port': 80} for i in range(4)]
    new = [{'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.1.%d' % i, 'port': 80} for i in range(4)]
    run_module('sk_lookup_binding', dict(base, bindings=old))
    out = run_module('sk_lookup_binding', dict(base, bindings=new))
    assert out['changed'] and len(out['added']) == 4 and len(out['removed']) == 4
    info = run_module('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']})
    assert [b['prefix'] for b in info['bindings']] == ['10.0.1.%d/32' % i for i in range(4)]
    # both tables hold the new set: replacing it back works too
    assert run_module('sk_lookup_binding', dict(base, bindings=old))['changed']
