"""Pure logic of bindings and protected rules (no kernel)."""


import pytest

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as b
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import compiler, dispatcher


def bind(label, protocol, prefix, port):
    return b.parse_binding({'label': label, 'protocol': protocol, 'prefix': prefix, 'port': port})


def test_host_bits_are_masked_and_bare_addresses_are_hosts():
    assert str(bind('x', 'tcp', '10.1.2.3/8', 0).network) == '10.0.0.0/8'
    assert str(bind('x', 'tcp', '192.0.2.7', 1).network) == '192.0.2.7/32'
    assert str(bind('x', 'udp', '2001:db8::1', 53).network) == '2001:db8::1/128'
    assert str(bind('x', 'UDP', '2001:db8:1::ff/32', '53').network) == '2001:db8::/32'


@pytest.mark.parametrize('entry, message', [
    ({'label': '', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 1}, 'label must be a non-empty string'),
    ({'label': 'a b', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 1}, "label 'a b' may only contain"),
    ({'label': 'x' * 64, 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 1}, 'is longer than 63 bytes'),
    ({'label': 'x', 'protocol': 'sctp', 'prefix': '1.2.3.4', 'port': 1}, "protocol must be 'tcp' or 'udp', got 'sctp'"),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.400', 'port': 1}, "prefix '1.2.3.400' is not a valid"),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '::ffff:10.0.0.0/104', 'port': 1}, 'IPv4-mapped'),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 65536}, "port 65536 is out of range"),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': -1}, "port -1 is out of range"),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 'http'}, "got 'http'"),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': True}, 'got True'),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4'}, 'is missing port'),
    ({'label': 'x', 'protocol': 'tcp', 'prefix': '1.2.3.4', 'port': 1, 'prot': 2}, 'unknown keys prot'),
])
def test_bad_entries_name_the_entry_and_value(entry, message):
    with pytest.raises(b.BindingError) as exc:
        b.parse_bindings([{'label': 'ok', 'protocol': 'tcp', 'prefix': '10.0.0.1', 'port': 1}, entry])
    assert 'bindings[1]' in str(exc.value) and message in str(exc.value)


def test_same_binding_two_labels_is_an_error_same_label_is_kept_once():
    ok = b.parse_bindings([{'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.0/8', 'port': 1},
                           {'label': 'a', 'protocol': 'tcp', 'prefix': '10.9.9.9/8', 'port': 1}])
    assert len(ok) == 1
    with pytest.raises(b.BindingError, match=r"bindings\[1\] tcp 10.0.0.0/8:1 -> b conflicts .* 'a'"):
        b.parse_bindings([{'label': 'a', 'protocol': 'tcp', 'prefix': '10.0.0.0/8', 'port': 1},
                          {'label': 'b', 'protocol': 'tcp', 'prefix': '10.1.2.3/8', 'port': 1}])


@pytest.mark.parametrize('protocol, prefix, port', [
    ('tcp', '0.0.0.0/0', 0), ('udp', '192.0.2.0/24', 53), ('tcp', '2001:db8::/32', 443),
    ('udp', '::/0', 0), ('tcp', '255.255.255.255/32', 65535)])
def test_key_round_trip(protocol, prefix, port):
    net = b.parse_prefix(prefix)
    raw = b.encode_key(protocol, net, port)
    assert len(raw) == b.KEY_SIZE == 24
    assert b.decode_key(raw) == (protocol, net, port)


def test_ipv6_keys_never_share_a_prefix_with_ipv4():
    # The family byte comes before the address, so ::/0 cannot cover an IPv4 key.
    v6 = b.encode_key('tcp', b.parse_prefix('::/0'), 0)
    v4 = b.encode_key('tcp', b.parse_prefix('127.0.0.1/32'), 0)
    assert v6[4:6] != v4[4:6]


def test_format_is_one_line_per_binding():
    assert str(bind('web', 'tcp', '192.0.2.0/24', 443)) == 'tcp 192.0.2.0/24:443 -> web'
    assert str(bind('dns', 'udp', '2001:db8::/32', 0)) == 'udp [2001:db8::/32]:* -> dns'


# Precedence as a table: (bindings, lookup) -> label or None
PRECEDENCE = [
    ([('a', '192.0.2.0/24', 0), ('b', '192.0.2.0/24', 443)], ('192.0.2.1', 443), 'b'),
    ([('a', '192.0.2.0/24', 0), ('b', '192.0.2.0/24', 443)], ('192.0.2.1', 80), 'a'),
    ([('a', '192.0.2.7/32', 0), ('b', '192.0.2.0/24', 80)], ('192.0.2.7', 80), 'a'),
    ([('a', '192.0.2.7/32', 0), ('b', '192.0.2.0/24', 80)], ('192.0.2.8', 80), 'b'),
    ([('a', '192.0.2.0/25', 80), ('b', '192.0.2.0/24', 80)], ('192.0.2.1', 80), 'a'),
    ([('a', '192.0.2.0/25', 80), ('b', '192.0.2.0/24', 80)], ('192.0.2.200', 80), 'b'),
    ([('a', '192.0.2.0/24', 0)], ('192.0.2.1', 65535), 'a'),
    ([('a', '192.0.2.0/24', 80)], ('198.51.100.1', 80), None),
    ([('a', '::/0', 0)], ('127.0.0.1', 80), None),
    ([('a', '::/0', 0)], ('::1', 80), 'a'),
]


@pytest.mark.parametrize('entries, lookup, expected', PRECEDENCE)
def test_precedence_model(entries, lookup, expected):
    bs = [bind(label, 'tcp', prefix, port) for label, prefix, port in entries]
    picked = b.select(bs, 'tcp', lookup[0], lookup[1])
    assert (picked.label if picked else None) == expected


def test_protected_rules_compile_to_masks():
    [rule] = b.protected_c_rules([{'protocol': 'tcp', 'prefix': '10.1.2.3/8', 'port': 22}])
    assert rule['prefix'] == '10.0.0.0/8' and rule['af'] == 2 and rule['ipproto'] == 6
    assert rule['words'] == [{'mask': '0xff000000', 'net': '0x0a000000'}]
    [rule] = b.protected_c_rules([{'protocol': 'udp', 'prefix': '2001:db8::/36', 'port': 0}])
    assert rule['words'] == [{'mask': '0xffffffff', 'net': '0x20010db8'},
                             {'mask': '0xf0000000', 'net': '0x00000000'}]
    [rule] = b.protected_c_rules([{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22}])
    assert rule['words'] == []


def test_protection_full_partial_none():
    rules = b.parse_protected([{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22}])
    assert b.protection_of(bind('x', 'tcp', '10.0.0.1', 22), rules)[0] == 'full'
    assert b.protection_of(bind('x', 'tcp', '10.0.0.0/8', 0), rules)[0] == 'partial'
    assert b.protection_of(bind('x', 'tcp', '10.0.0.0/8', 80), rules)[0] is None
    assert b.protection_of(bind('x', 'udp', '10.0.0.1', 22), rules)[0] is None
    assert b.protection_of(bind('x', 'tcp', '::1', 22), rules)[0] is None


def test_manifest_round_trips_through_the_template_header():
    src = ('/* x\n * bpfsteer:format=2\n * bpfsteer:missing_socket=pass\n'
           ' * bpfsteer:protected=tcp 0.0.0.0/0 22\n */\n')
    m = dispatcher.parse_manifest(src)
    assert m['missing_socket'] == 'pass'
    assert m['protected'] == [{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': '22'}]


def test_missing_headers_message_says_what_to_do(monkeypatch):
    monkeypatch.setattr(compiler.platform, 'release', lambda: '9.9.9-none')
    monkeypatch.setattr(compiler.os.path, 'exists', lambda p: False)
    message = compiler.headers_problem()
    assert '/lib/modules/9.9.9-none/build' in message and 'linux-headers-9.9.9-none' in message


def test_instance_names():
    assert dispatcher.instance_dir('/sys/fs/bpf', 'edge-1') == '/sys/fs/bpf/sk_lookup/edge-1'
    for bad in ('', 'a.b', '../x', 'a/b', 'x' * 65, '-x'):
        with pytest.raises(dispatcher.DispatcherError):
            dispatcher.check_instance_name(bad)


@pytest.mark.parametrize('text', ['10.1.2.3/8', '0.0.0.0/0', '192.0.2.255/31', '2001:db8:1:2::ff/36', '::/0',
                                  '::1', 'fe80::1/10', '1:0:1:1:1:1:1:1/128', '2001:db8::/32', '255.255.255.255'])
def test_prefix_agrees_with_ipaddress(text):
    import ipaddress
    assert str(b.parse_prefix(text)) == str(ipaddress.ip_network(text, strict=False))


def test_prefix_relations():
    p = b.parse_prefix
    assert p('10.1.0.0/16').subnet_of(p('10.0.0.0/8')) and not p('10.0.0.0/8').subnet_of(p('10.1.0.0/16'))
    assert p('10.0.0.0/8').overlaps(p('10.1.2.3/32')) and not p('10.0.0.0/8').overlaps(p('11.0.0.0/8'))
    assert not p('::/0').overlaps(p('0.0.0.0/0'))
    assert p('10.0.0.0/8') == p('10.9.9.9/8') and len({p('10.0.0.0/8'), p('10.9.9.9/8')}) == 1


# --- the data plane's layout --------------------------------------------------

def test_key_round_trips_and_masks_nothing_itself():
    for protocol, prefix, port in (('tcp', '192.0.2.0/24', 443), ('udp', '2001:db8::/32', 0),
                                   ('tcp', '0.0.0.0/0', 0), ('udp', '::/0', 53), ('tcp', '10.1.2.3', 65535)):
        net = b.parse_prefix(prefix)
        raw = b.encode_key(protocol, net, port)
        assert len(raw) == b.KEY_SIZE == 24
        assert b.decode_key(raw) == (protocol, net, port)
    # IPv4 0.0.0.0/0 and IPv6 ::/0 share prefix bits and length; the family keeps them apart
    assert b.encode_key('tcp', b.parse_prefix('0.0.0.0/0'), 0) != b.encode_key('tcp', b.parse_prefix('::/0'), 0)


def test_length_sets_longest_first_with_port_kinds():
    matches = [('tcp', b.parse_prefix(p), port) for p, port in
               (('10.0.0.0/8', 0), ('10.1.0.0/16', 80), ('10.1.0.0/16', 0), ('10.1.2.3', 443), ('10.9.0.0/16', 22))]
    matches.append(('udp', b.parse_prefix('2001:db8::/64'), 53))
    sets = b.length_sets(matches)
    assert sets == {('tcp', 4): [(32, b.HAS_PORT), (16, b.HAS_PORT | b.HAS_ANY_PORT), (8, b.HAS_ANY_PORT)],
                    ('udp', 6): [(64, b.HAS_PORT)]}
    raw = b.encode_length_set(sets[('tcp', 4)])
    assert len(raw) == b.LENGTH_SET_SIZE == 268
    assert b.decode_length_set(raw) == (False, sets[('tcp', 4)])
    assert b.hash_probes(sets[('tcp', 4)]) == 4
    # past eight hash lookups a set goes to the trie; its lengths stay listed
    every = [(plen, b.HAS_PORT) for plen in range(128, -1, -1)]
    assert b.decode_length_set(b.encode_length_set(every)) == (True, every)
    assert not b.uses_trie(every[:8]) and b.uses_trie(every[:9])
    both = [(plen, b.HAS_PORT | b.HAS_ANY_PORT) for plen in (32, 24, 16, 8)]
    assert b.hash_probes(both) == 8 and not b.uses_trie(both) and b.uses_trie(both + [(0, b.HAS_ANY_PORT)])
    assert [b.length_set_index(t, p, v) for t in (0, 1) for p in ('tcp', 'udp') for v in (4, 6)] == list(range(8))


def _trie_lookup(trie, protocol, packed, port):
    """BPF_MAP_TYPE_LPM_TRIE's answer: the entry whose key shares the most leading bits,
    counting the 32 header bits (protocol, family, port) that must match in full."""
    version = 4 if len(packed) == 4 else 6
    best = None
    for key, value in trie.items():
        p, net, prt = b.decode_trie_key(key)
        if p == protocol and net.version == version and prt == port and net.contains_packed(packed):
            if best is None or net.prefixlen > best[0]:
                best = (net.prefixlen, value)
    return best


def _program_walk(table, trie, sets, protocol, address, port):
    """The dispatch program's lookups, step for step, over dicts for the hash table and trie."""
    packed = b.parse_address(address)
    version = 4 if len(packed) == 4 else 6
    entries = sets.get((protocol, version), [])
    if b.uses_trie(entries):
        specific, wildcard = _trie_lookup(trie, protocol, packed, port), _trie_lookup(trie, protocol, packed, 0)
        if not specific or (wildcard and wildcard[0] > specific[0]):
            specific = wildcard
        return specific[1] if specific else None
    for plen, kinds in entries:
        net = b.Prefix.masked(version, packed, plen)
        for wanted, bit in ((port, b.HAS_PORT), (0, b.HAS_ANY_PORT)):
            if kinds & bit:
                hit = table.get(b.encode_key(protocol, net, wanted))
                if hit is not None:
                    return hit
    return None


def test_program_walk_agrees_with_the_precedence_model():
    import random
    rng = random.Random(7)
    modes = set()
    for _round in range(60):
        bindings = {}
        for i in range(rng.randint(1, 30)):
            version = rng.choice((4, 6))
            bits = 32 if version == 4 else 128
            base = '10.%d.%d.%d' % (rng.randint(0, 1), rng.randint(0, 3), rng.randint(0, 255)) \
                if version == 4 else '2001:db8:%x::%x' % (rng.randint(0, 1), rng.randint(0, 255))
            prefix = '%s/%d' % (base, rng.choice([0, 8, 15, 16, 23, 24, 30, bits]))
            entry = {'label': 'l%d' % i, 'protocol': rng.choice(('tcp', 'udp')), 'prefix': prefix,
                     'port': rng.choice((0, 0, 53, 80, 443))}
            binding = b.parse_binding(entry)
            bindings.setdefault(binding.match, binding)
        sets = b.length_sets(bindings)
        in_trie = set(c for c, e in sets.items() if b.uses_trie(e))
        table = dict((m.to_key(), m.label) for m in bindings.values()
                     if (m.protocol, m.network.version) not in in_trie)
        trie = dict((b.encode_trie_key(*m.match), m.label) for m in bindings.values()
                    if (m.protocol, m.network.version) in in_trie)
        modes.update(('trie' if c in in_trie else 'hash') for c in sets)
        for _probe in range(60):
            protocol = rng.choice(('tcp', 'udp'))
            address = rng.choice(('10.%d.%d.%d' % (rng.randint(0, 1), rng.randint(0, 3), rng.randint(0, 255)),
                                  '2001:db8:%x::%x' % (rng.randint(0, 1), rng.randint(0, 255)), '192.0.2.1'))
            port = rng.choice((53, 80, 443, 8080))
            model = b.select(bindings.values(), protocol, address, port)
            assert _program_walk(table, trie, sets, protocol, address, port) == (model.label if model else None), \
                (protocol, address, port, sorted(map(str, bindings.values())))
    assert modes == {'hash', 'trie'}        # both ways of looking up were exercised


def test_table_sizes_follow_the_set():
    assert dispatcher.capacity_for(0, 10 ** 6) == dispatcher.TABLE_MIN
    assert dispatcher.capacity_for(100000, 10 ** 6) == 131072
    assert dispatcher.capacity_for(110000, 10 ** 6) == 262144       # a quarter of headroom
    assert dispatcher.capacity_for(900000, 10 ** 6) == 10 ** 6      # never above max_bindings
    assert dispatcher.capacity_for(10, 16) == 16
    assert not dispatcher.table_fits(65, 64, 10 ** 6)                 # full: grow
    assert dispatcher.table_fits(5000, 8192, 10 ** 6)
    assert dispatcher.table_fits(10, 256, 10 ** 6)                    # 4x the fresh size: keep
    assert not dispatcher.table_fits(10, 512, 10 ** 6)                # more: shrink
    assert dispatcher.table_fits(10, 10 ** 6, 10 ** 6)                # full size stays (pre-5.10 kernels)
