# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bindings and protected rules as values: parsing, normalising, encoding.

Pure logic with no kernel access, shared by the modules, the filter plugin
that renders the dispatch program and the unit tests. The byte layouts here
mirror ``struct binding_key``/``binding_value`` in ``bpf/dispatch.c.j2``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct
from collections import namedtuple

LABEL_MAX = 63
PROTOCOLS = {'tcp': socket.IPPROTO_TCP, 'udp': socket.IPPROTO_UDP}
PROTOCOL_NAMES = dict((v, k) for k, v in PROTOCOLS.items())
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY_NAMES = {socket.AF_INET: 'ipv4', socket.AF_INET6: 'ipv6'}

# struct binding_key: u8 protocol, u8 family, u16 port (BE), u32 prefixlen, u8 addr[16] (masked)
_KEY = struct.Struct('=BB2sI16s')
# the value: u32 destination id
_VALUE = struct.Struct('=I')
KEY_SIZE = _KEY.size
VALUE_SIZE = _VALUE.size

# struct trie_key: u32 prefixlen (32 header bits + address bits), u8 protocol, u8 family,
# u16 port (BE), u8 addr[16]; struct trie_value: u32 dest_id, u32 address prefix length
_TRIE_KEY = struct.Struct('=IBB2s16s')
_TRIE_VALUE = struct.Struct('=II')
TRIE_KEY_SIZE = _TRIE_KEY.size
TRIE_VALUE_SIZE = _TRIE_VALUE.size
TRIE_HEADER_BITS = 32

# struct length_set: u32 count, u32 mode, u8 length[129], u8 kinds[129], padding to 4 bytes
MAX_LENGTHS = 129
_LENGTH_SET = struct.Struct('=II%ds%ds2x' % (MAX_LENGTHS, MAX_LENGTHS))
LENGTH_SET_SIZE = _LENGTH_SET.size
HAS_PORT = 1
HAS_ANY_PORT = 2
USE_TRIE = 1
# Most hash lookups a lookup may take before its (protocol, family) goes to the trie
# instead: two trie walks cost about as much as eight hash lookups (BENCHMARKS.md, 1).
MAX_HASH_PROBES = 8


class BindingError(ValueError):
    """Invalid input; the message names the offending entry and value."""


class Binding(namedtuple('Binding', 'protocol network port label')):
    """One binding; ``network`` is a Prefix with host bits masked off."""

    __slots__ = ()

    @property
    def family(self):
        return FAMILIES[self.network.version]

    @property
    def match(self):
        """The part that identifies a binding: everything but the label."""
        return (self.protocol, self.network, self.port)

    def to_key(self):
        return encode_key(self.protocol, self.network, self.port)

    def as_dict(self):
        return {'protocol': self.protocol, 'prefix': str(self.network), 'port': self.port,
                'label': self.label}

    def __str__(self):
        if self.label is None:
            return format_match(self.protocol, self.network, self.port)
        return '%s -> %s' % (format_match(self.protocol, self.network, self.port), self.label)


def format_match(protocol, network, port):
    """``tcp 192.0.2.0/24:443``, ``udp [2001:db8::/32]:53``; port 0 prints as ``*``."""
    net = str(network) if network.version == 4 else '[%s]' % network
    return '%s %s:%s' % (protocol, net, port if port else '*')


def check_label(label, where='label'):
    if not isinstance(label, str) or not label:
        raise BindingError('%s must be a non-empty string, got %r' % (where, label))
    if len(label.encode('utf-8')) > LABEL_MAX:
        raise BindingError('%s %r is longer than %d bytes' % (where, label, LABEL_MAX))
    if not all(33 <= ord(c) <= 126 for c in label):
        raise BindingError('%s %r may only contain printable ASCII characters without spaces'
                           % (where, label))
    return label


def parse_protocol(value, where='protocol'):
    proto = str(value).lower() if value is not None else None
    if proto not in PROTOCOLS:
        raise BindingError("%s must be 'tcp' or 'udp', got %r" % (where, value))
    return proto


class Prefix(object):
    """An IP prefix with host bits masked off.

    ``ipaddress`` costs tens of microseconds per object, which dominates a
    100,000-binding call; this keeps just what the dispatcher needs.
    """

    __slots__ = ('version', 'packed', 'prefixlen')

    def __init__(self, version, packed, prefixlen):
        self.version = version
        self.packed = packed
        self.prefixlen = prefixlen

    @classmethod
    def masked(cls, version, packed, prefixlen):
        bits = len(packed) * 8
        value = int.from_bytes(packed, 'big') & (((1 << prefixlen) - 1) << (bits - prefixlen))
        return cls(version, value.to_bytes(len(packed), 'big'), prefixlen)

    @property
    def address(self):
        return socket.inet_ntop(socket.AF_INET6 if self.version == 6 else socket.AF_INET, self.packed)

    def __str__(self):
        return '%s/%d' % (self.address, self.prefixlen)

    def __repr__(self):
        return 'Prefix(%r)' % str(self)

    def __eq__(self, other):
        return isinstance(other, Prefix) and (self.packed, self.prefixlen) == (other.packed, other.prefixlen)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((self.packed, self.prefixlen))

    def contains_packed(self, packed):
        return len(packed) == len(self.packed) and Prefix.masked(self.version, packed, self.prefixlen) == self

    def subnet_of(self, other):
        return self.version == other.version and self.prefixlen >= other.prefixlen and \
            other.contains_packed(self.packed)

    def overlaps(self, other):
        return self.subnet_of(other) or other.subnet_of(self)

    def words(self):
        """(mask, network) per 32-bit word, in host order integers."""
        size = len(self.packed)
        mask = (((1 << self.prefixlen) - 1) << (size * 8 - self.prefixlen)).to_bytes(size, 'big')
        return [(struct.unpack('>I', mask[i:i + 4])[0], struct.unpack('>I', self.packed[i:i + 4])[0])
                for i in range(0, len(self.packed), 4)]


_V4_MAPPED = b'\0' * 10 + b'\xff\xff'


def parse_prefix(value, where='prefix'):
    """A CIDR or bare address, host bits masked off; IPv4-mapped IPv6 refused."""
    if not isinstance(value, str) or not value.strip():
        raise BindingError('%s must be an IPv4 or IPv6 address or CIDR, got %r' % (where, value))
    addr, sep, length = value.strip().partition('/')
    version, family, bits = (6, socket.AF_INET6, 128) if ':' in addr else (4, socket.AF_INET, 32)
    try:
        packed = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        raise BindingError('%s %r is not a valid IPv4 or IPv6 prefix: %r is not an IPv%d address'
                           % (where, value, addr, version))
    if not sep:
        prefixlen = bits
    elif length.isdigit() and int(length) <= bits:
        prefixlen = int(length)
    else:
        raise BindingError('%s %r is not a valid IPv4 or IPv6 prefix: the length must be 0..%d'
                           % (where, value, bits))
    if version == 6 and packed[:12] == _V4_MAPPED and prefixlen >= 96:
        raise BindingError('%s %r is an IPv4-mapped IPv6 prefix; write the IPv4 prefix instead'
                           % (where, value))
    return Prefix.masked(version, packed, prefixlen)


def parse_address(value):
    family = socket.AF_INET6 if ':' in value else socket.AF_INET
    return socket.inet_pton(family, value)


def parse_port(value, where='port'):
    if isinstance(value, bool):
        raise BindingError('%s must be an integer 0..65535, got %r' % (where, value))
    try:
        port = int(str(value), 10)
    except (TypeError, ValueError):
        raise BindingError('%s must be an integer 0..65535 (0 = every port), got %r' % (where, value))
    if not 0 <= port <= 65535:
        raise BindingError('%s %r is out of range 0..65535 (0 = every port)' % (where, value))
    return port


def parse_binding(entry, index=None, require_label=True):
    """Turn a dict with label/protocol/prefix/port into a normalised Binding.

    With require_label=False (removals) a missing label becomes None."""
    where = 'binding' if index is None else 'bindings[%d]' % index
    if not isinstance(entry, dict):
        raise BindingError('%s must be a dict with label, protocol, prefix and port, got %r' % (where, entry))
    unknown = sorted(set(entry) - set(('label', 'protocol', 'prefix', 'port')))
    if unknown:
        raise BindingError('%s has unknown keys %s; expected label, protocol, prefix, port'
                           % (where, ', '.join(unknown)))
    required = ('label', 'protocol', 'prefix', 'port') if require_label else ('protocol', 'prefix', 'port')
    missing = [k for k in required if entry.get(k) is None]
    if missing:
        raise BindingError('%s %r is missing %s' % (where, entry, ', '.join(missing)))
    label = None
    if entry.get('label') is not None:
        label = check_label(entry['label'], '%s label' % where)
    protocol = parse_protocol(entry['protocol'], '%s protocol' % where)
    network = parse_prefix(entry['prefix'], '%s prefix' % where)
    port = parse_port(entry['port'], '%s port' % where)
    return Binding(protocol, network, port, label)


def parse_bindings(entries, require_label=True):
    """Normalise a list; the same match listed with two labels is an error,
    the same binding listed twice is kept once."""
    result = {}
    for index, entry in enumerate(entries or []):
        binding = parse_binding(entry, index, require_label)
        other = result.get(binding.match)
        if other is not None and other.label != binding.label:
            raise BindingError('bindings[%d] %s conflicts with an earlier entry that sends it to %r'
                               % (index, binding, other.label))
        result[binding.match] = binding
    return result


def encode_key(protocol, network, port):
    return _KEY.pack(PROTOCOLS[protocol], FAMILIES[network.version], struct.pack('>H', port),
                     network.prefixlen, network.packed.ljust(16, b'\0'))


def decode_key(raw):
    """Inverse of encode_key: (protocol, network, port)."""
    proto, family, port, plen, addr = _KEY.unpack(raw)
    if family == socket.AF_INET:
        network = Prefix(4, addr[:4], plen)
    else:
        network = Prefix(6, addr, plen)
    return PROTOCOL_NAMES.get(proto, str(proto)), network, struct.unpack('>H', port)[0]


def encode_value(dest_id):
    return _VALUE.pack(dest_id)


def decode_value(raw):
    """The destination id a binding sends to."""
    return _VALUE.unpack(raw)[0]


def length_set_index(table, protocol, version):
    """Where the program finds the prefix lengths of one table for one protocol and family."""
    return table * 4 + (2 if protocol == 'udp' else 0) + (1 if version == 6 else 0)


def length_sets(matches):
    """The prefix lengths a set of bindings uses, as the program walks them.

    ``matches`` is an iterable of (protocol, network, port). Returns
    {(protocol, version): [(prefixlen, kinds), ...]} longest first, where
    kinds has HAS_PORT if some binding of that length names a port and
    HAS_ANY_PORT if some has port 0. The program tries exactly these
    lookups, so a missing length would hide bindings and an extra one
    only costs a lookup.
    """
    kinds = {}
    for protocol, network, port in matches:
        per = kinds.setdefault((protocol, network.version), {})
        per[network.prefixlen] = per.get(network.prefixlen, 0) | (HAS_ANY_PORT if port == 0 else HAS_PORT)
    return dict((combo, sorted(per.items(), reverse=True)) for combo, per in kinds.items())


def hash_probes(entries):
    """How many hash lookups a miss costs with these [(prefixlen, kinds), ...]."""
    return sum(bin(kinds).count('1') for _plen, kinds in entries)


def uses_trie(entries):
    """Whether a (protocol, family) with these lengths is looked up in the trie."""
    return hash_probes(entries) > MAX_HASH_PROBES


def encode_length_set(entries):
    """struct length_set for one [(prefixlen, kinds), ...] list, longest first.

    Past MAX_HASH_PROBES the set says "use the trie"; the program then ignores
    the lengths, which stay listed for sk_lookup_info.
    """
    if len(entries) > MAX_LENGTHS:
        raise ValueError('%d prefix lengths, at most %d exist' % (len(entries), MAX_LENGTHS))
    return _LENGTH_SET.pack(len(entries), USE_TRIE if uses_trie(entries) else 0,
                            bytes(plen for plen, _k in entries), bytes(k for _p, k in entries))


def decode_length_set(raw):
    """(uses the trie, [(prefixlen, kinds), ...])."""
    count, mode, lengths, kinds = _LENGTH_SET.unpack(raw)
    return mode == USE_TRIE, list(zip(lengths[:count], kinds[:count]))


def encode_trie_key(protocol, network, port):
    return _TRIE_KEY.pack(TRIE_HEADER_BITS + network.prefixlen, PROTOCOLS[protocol], FAMILIES[network.version],
                          struct.pack('>H', port), network.packed.ljust(16, b'\0'))


def decode_trie_key(raw):
    """Inverse of encode_trie_key: (protocol, network, port)."""
    prefixlen, proto, family, port, addr = _TRIE_KEY.unpack(raw)
    plen = prefixlen - TRIE_HEADER_BITS
    network = Prefix(4, addr[:4], plen) if family == socket.AF_INET else Prefix(6, addr, plen)
    return PROTOCOL_NAMES.get(proto, str(proto)), network, struct.unpack('>H', port)[0]


def encode_trie_value(dest_id, network):
    return _TRIE_VALUE.pack(dest_id, network.prefixlen)


def decode_trie_value(raw):
    """The destination id a trie entry sends to."""
    return _TRIE_VALUE.unpack(raw)[0]


def select(bindings, protocol, address, port):
    """The binding the dispatch program picks for a lookup, or None.

    A model of the C code's precedence, used in unit tests and by the info
    module's explanations: longest prefix wins, then a specific port beats
    port 0. ``bindings`` is an iterable of Binding.
    """
    packed = parse_address(address)
    best = None
    for b in bindings:
        if b.protocol != protocol or not b.network.contains_packed(packed):
            continue
        if b.port not in (0, port):
            continue
        rank = (b.network.prefixlen, b.port != 0)
        if best is None or rank > best[0]:
            best = (rank, b)
    return best[1] if best else None


# --- protected rules -------------------------------------------------------

def parse_protected(entries):
    """Normalise the ``protected`` list: (protocol, network, port) tuples."""
    rules = []
    for index, entry in enumerate(entries or []):
        where = 'protected[%d]' % index
        if not isinstance(entry, dict):
            raise BindingError('%s must be a dict with protocol, prefix and port, got %r' % (where, entry))
        unknown = sorted(set(entry) - set(('protocol', 'prefix', 'port')))
        if unknown:
            raise BindingError('%s has unknown keys %s; expected protocol, prefix, port'
                               % (where, ', '.join(unknown)))
        rule = (parse_protocol(entry.get('protocol'), '%s protocol' % where),
                parse_prefix(entry.get('prefix'), '%s prefix' % where),
                parse_port(entry.get('port', 0), '%s port' % where))
        if rule not in rules:
            rules.append(rule)
    return rules


def protected_c_rules(entries):
    """Rules with the constants the C template compares against.

    Each IPv4 rule has one 32-bit word, IPv6 four; a word whose mask is zero
    is left out because it matches everything.
    """
    out = []
    for protocol, network, port in parse_protected(entries):
        words = [{'mask': '0x%08x' % mask, 'net': '0x%08x' % net} for mask, net in network.words() if mask]
        out.append({'protocol': protocol, 'prefix': str(network), 'port': port,
                    'ipproto': PROTOCOLS[protocol], 'af': FAMILIES[network.version],
                    'version': network.version, 'words': words})
    return out


def protection_of(binding, rules):
    """('full', rule) when every packet of the binding is protected,
    ('partial', rule) when some are, (None, None) otherwise."""
    partial = None
    for rule in rules:
        protocol, network, port = rule
        if protocol != binding.protocol or network.version != binding.network.version:
            continue
        if not binding.network.overlaps(network):
            continue
        if port not in (0, binding.port) and binding.port != 0:
            continue
        if binding.network.subnet_of(network) and (port == 0 or port == binding.port):
            return 'full', rule
        partial = partial or rule
    return ('partial', partial) if partial else (None, None)


# --- planning a change ------------------------------------------------------

class Change(object):
    """The difference between the bindings in the kernel and the desired set."""

    def __init__(self, current, desired):
        self.current = current
        self.desired = desired
        self.added = [b for m, b in desired.items() if m not in current]
        self.removed = [b for m, b in current.items() if m not in desired]
        self.relabeled = [(current[m], b) for m, b in desired.items()
                          if m in current and current[m].label != b.label]

    @property
    def changed(self):
        return bool(self.added or self.removed or self.relabeled)

    def diff_lines(self):
        """(before, after) text: one line per binding that goes away or comes in."""
        key = sort_key
        before = sorted(self.removed + [old for old, _new in self.relabeled], key=key)
        after = sorted(self.added + [new for _old, new in self.relabeled], key=key)
        return ''.join(str(b) + '\n' for b in before), ''.join(str(b) + '\n' for b in after)


def sort_key(b):
    return (b.protocol, b.network.version, b.network.packed, b.network.prefixlen, b.port, b.label or '')


def sort_bindings(items):
    return sorted(items, key=sort_key)


def plan(current, listed, state='present', exclusive=False):
    """The desired set for a module call.

    present: ``listed`` is added to (or, with exclusive, replaces) ``current``;
    a listed binding whose match exists with another label is relabelled.
    absent: the listed matches are removed; an entry with a label removes the
    binding only while it points at that label.
    Returns (Change, skipped) where skipped are absent-matches left alone
    because they belong to another label.
    """
    skipped = []
    if state == 'present':
        desired = dict(listed) if exclusive else dict(current)
        if not exclusive:
            desired.update(listed)
    else:
        desired = dict(current)
        for match, binding in listed.items():
            have = current.get(match)
            if have is None:
                continue
            if binding.label is not None and have.label != binding.label:
                skipped.append(have)
                continue
            del desired[match]
    return Change(current, desired), skipped
