"""The binding sets of the lookup benchmarks (standard library only).

Sets of N bindings, spread evenly over tcp/udp x IPv4/IPv6. Fillers are host
prefixes (/32, /128) drawn at random from the benchmarking ranges
198.18.0.0/15 and 2001:2::/48, each on one of 17 ports (16 well-known ports
and port 0). Per (protocol, family) the probes are:
  hit port    a filler with a real port, pointed at the label "bench"
  hit port 0  a /24 (/64) on port 0 -> "bench", looked up on a real port
  miss        an address inside the populated range that no binding covers

The length sweep (length_sweep_set) instead fills K distinct prefix lengths
for one (protocol, family), the program's cost driver.
"""

import random
import socket
import struct

LABEL = 'bench'
PORTS = [22, 25, 53, 80, 110, 143, 443, 465, 587, 853, 993, 995, 3306, 5432, 8080, 8443, 0]
HIT_PORT = 443
COMBOS = [('tcp', 4), ('udp', 4), ('tcp', 6), ('udp', 6)]
CASES = ['hit port', 'hit port 0', 'miss']

V4_BASE = struct.unpack('>I', socket.inet_aton('198.18.0.0'))[0]
V4_SPAN = 2 * 65536 - 256            # 198.18.0.0 - 198.19.254.255; 198.19.255.0/24 is the port-0 probe
V4_PORT0 = '198.19.255.0/24'
V4_PORT0_ADDR = '198.19.255.7'
V6_PREFIX = bytes.fromhex('20010002' + '0000')   # 2001:2:0::/48
V6_PORT0 = '2001:2:0:ffff::/64'
V6_PORT0_ADDR = '2001:2:0:ffff::7'

SK_PASS = 1


def v4_addr(i):
    return socket.inet_ntoa(struct.pack('>I', V4_BASE + i))


def v6_addr(rnd):
    # 80 random bits after the /48; the 4th group never 0xffff (the port-0 probe's /64)
    subnet = rnd.randrange(0xffff)
    tail = rnd.getrandbits(64)
    return socket.inet_ntop(socket.AF_INET6, V6_PREFIX + struct.pack('>HQ', subnet, tail))


def binding(proto, version, addr, port, label, plen=None):
    plen = plen or (32 if version == 4 else 128)
    return {'label': label, 'protocol': proto, 'prefix': '%s/%d' % (addr, plen), 'port': port}


def build_set(total, seed=1):
    """(bindings list, probes) for a table of exactly ``total`` bindings (total >= 8).

    probes[(proto, version)] = {'hit port': (addr, port), 'hit port 0': ..., 'miss': ...}
    """
    rnd = random.Random(seed)
    per_combo = [total // 4 + (1 if i < total % 4 else 0) for i in range(4)]
    entries, probes = [], {}
    for (proto, version), count in zip(COMBOS, per_combo):
        fillers = count - 1                      # one slot for the port-0 probe
        used = set()
        if version == 4:
            space = V4_SPAN * len(PORTS)
            picks = rnd.sample(range(space), fillers + 64)
            pairs = [(v4_addr(p // len(PORTS)), PORTS[p % len(PORTS)]) for p in picks]
        else:
            pairs = [(v6_addr(rnd), rnd.choice(PORTS)) for _ in range(fillers + 64)]
        spare, pairs = pairs[fillers:], pairs[:fillers]
        hit = next(p for p in pairs if p[1] == HIT_PORT)
        for addr, port in pairs:
            used.add((addr, port))
            entries.append(binding(proto, version, addr, port, LABEL if (addr, port) == hit else 'fill'))
        miss = next(a for a, _p in spare if (a, HIT_PORT) not in used and (a, 0) not in used)
        if version == 4:
            entries.append({'label': LABEL, 'protocol': proto, 'prefix': V4_PORT0, 'port': 0})
            port0 = V4_PORT0_ADDR
        else:
            entries.append({'label': LABEL, 'protocol': proto, 'prefix': V6_PORT0, 'port': 0})
            port0 = V6_PORT0_ADDR
        probes[(proto, version)] = {'hit port': hit, 'hit port 0': (port0, HIT_PORT), 'miss': (miss, HIT_PORT)}
    assert len(entries) == total, (len(entries), total)
    return entries, probes


def single_sets():
    """For N = 1: {(combo, case): (one-binding list, (addr, port) to look up)}."""
    out = {}
    for proto, version in COMBOS:
        hit = ('198.18.0.10', HIT_PORT) if version == 4 else ('2001:2::10', HIT_PORT)
        port0 = (V4_PORT0, V4_PORT0_ADDR) if version == 4 else (V6_PORT0, V6_PORT0_ADDR)
        specific = [binding(proto, version, hit[0], hit[1], LABEL)]
        out[(proto, version), 'hit port'] = (specific, hit)
        out[(proto, version), 'hit port 0'] = ([{'label': LABEL, 'protocol': proto, 'prefix': port0[0],
                                                 'port': 0}], (port0[1], HIT_PORT))
        miss = ('198.18.0.11', HIT_PORT) if version == 4 else ('2001:2::11', HIT_PORT)
        out[(proto, version), 'miss'] = (specific, miss)
    return out


SWEEP_ADDR = {4: '198.18.7.77', 6: '2001:2::7:77'}
SWEEP_MISS_PORT = HIT_PORT + 1


def length_sweep_set(proto, version, count):
    """Bindings at ``count`` distinct prefix lengths (the longest ones: /32 down, /128 down).

    At every length a prefix next to the probe address (the probe's prefix with
    its last bit flipped), on HIT_PORT and on port 0, so both lookups of the
    length are tried and miss; at the shortest length also the probe's own
    prefix on HIT_PORT -> "bench" (at /0, where no prefix lies next to the
    probe, only that one). Returns (bindings, {'hit shortest': (addr, port),
    'miss': (addr, port)}): the hit walks every longer length first, the miss
    (another port) walks them all.
    """
    bits = 32 if version == 4 else 128
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    addr = SWEEP_ADDR[version]
    value = int.from_bytes(socket.inet_pton(family, addr), 'big')

    def prefix(v, plen):
        masked = v & (((1 << plen) - 1) << (bits - plen))
        return '%s/%d' % (socket.inet_ntop(family, masked.to_bytes(bits // 8, 'big')), plen)
    entries = []
    lengths = range(bits, bits - count, -1)
    for plen in lengths:
        if plen:
            sibling = prefix(value ^ (1 << (bits - plen)), plen)
            entries += [{'label': 'fill', 'protocol': proto, 'prefix': sibling, 'port': p} for p in (HIT_PORT, 0)]
    entries.append({'label': LABEL, 'protocol': proto, 'prefix': prefix(value, lengths[-1]), 'port': HIT_PORT})
    return entries, {'hit shortest': (addr, HIT_PORT), 'miss': (addr, SWEEP_MISS_PORT)}
