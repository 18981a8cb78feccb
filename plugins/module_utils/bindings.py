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

import ipaddress
import socket
import struct
from collections import namedtuple

LABEL_MAX = 63
PROTOCOLS = {'tcp': socket.IPPROTO_TCP, 'udp': socket.IPPROTO_UDP}
PROTOCOL_NAMES = dict((v, k) for k, v in PROTOCOLS.items())
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY_NAMES = {socket.AF_INET: 'ipv4', socket.AF_INET6: 'ipv6'}
KEY_HEADER_BITS = 32

# struct binding_key: u32 prefixlen, u8 protocol, u8 family, u16 port (BE), u8 addr[16]
_KEY = struct.Struct('=IBB2s16s')
_VALUE = struct.Struct('=II')
KEY_SIZE = _KEY.size
VALUE_SIZE = _VALUE.size


class BindingError(ValueError):
    """Invalid input; the message names the offending entry and value."""


class Binding(namedtuple('Binding', 'protocol network port label')):
    """One binding; ``network`` is an ipaddress network with host bits masked off."""

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


def parse_prefix(value, where='prefix'):
    """A CIDR or bare address, host bits masked off; IPv4-mapped IPv6 refused."""
    if not isinstance(value, str) or not value.strip():
        raise BindingError('%s must be an IPv4 or IPv6 address or CIDR, got %r' % (where, value))
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise BindingError('%s %r is not a valid IPv4 or IPv6 prefix: %s' % (where, value, exc))
    if network.version == 6 and network.network_address.ipv4_mapped is not None and network.prefixlen >= 96:
        raise BindingError('%s %r is an IPv4-mapped IPv6 prefix; write the IPv4 prefix instead'
                           % (where, value))
    return network


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


def parse_binding(entry, index=None):
    """Turn a dict with label/protocol/prefix/port into a normalised Binding."""
    where = 'binding' if index is None else 'bindings[%d]' % index
    if not isinstance(entry, dict):
        raise BindingError('%s must be a dict with label, protocol, prefix and port, got %r' % (where, entry))
    unknown = sorted(set(entry) - set(('label', 'protocol', 'prefix', 'port')))
    if unknown:
        raise BindingError('%s has unknown keys %s; expected label, protocol, prefix, port'
                           % (where, ', '.join(unknown)))
    missing = [k for k in ('label', 'protocol', 'prefix', 'port') if entry.get(k) is None]
    if missing:
        raise BindingError('%s %r is missing %s' % (where, entry, ', '.join(missing)))
    label = check_label(entry['label'], '%s label' % where)
    protocol = parse_protocol(entry['protocol'], '%s protocol' % where)
    network = parse_prefix(entry['prefix'], '%s prefix' % where)
    port = parse_port(entry['port'], '%s port' % where)
    return Binding(protocol, network, port, label)


def parse_bindings(entries):
    """Normalise a list; the same match listed with two labels is an error,
    the same binding listed twice is kept once."""
    result = {}
    for index, entry in enumerate(entries or []):
        binding = parse_binding(entry, index)
        other = result.get(binding.match)
        if other is not None and other.label != binding.label:
            raise BindingError('bindings[%d] %s conflicts with an earlier entry that sends it to %r'
                               % (index, binding, other.label))
        result[binding.match] = binding
    return result


def encode_key(protocol, network, port):
    addr = network.network_address.packed
    return _KEY.pack(KEY_HEADER_BITS + network.prefixlen, PROTOCOLS[protocol],
                     FAMILIES[network.version], struct.pack('>H', port), addr.ljust(16, b'\0'))


def decode_key(raw):
    """Inverse of encode_key: (protocol, network, port)."""
    prefixlen, proto, family, port, addr = _KEY.unpack(raw)
    plen = prefixlen - KEY_HEADER_BITS
    if family == socket.AF_INET:
        network = ipaddress.IPv4Network((addr[:4], plen))
    else:
        network = ipaddress.IPv6Network((addr, plen))
    return PROTOCOL_NAMES.get(proto, str(proto)), network, struct.unpack('>H', port)[0]


def encode_value(dest_id, network):
    return _VALUE.pack(dest_id, network.prefixlen)


def decode_value(raw):
    return _VALUE.unpack(raw)


def select(bindings, protocol, address, port):
    """The binding the dispatch program picks for a lookup, or None.

    A model of the C code's precedence, used in unit tests and by the info
    module's explanations: longest prefix wins, then a specific port beats
    port 0. ``bindings`` is an iterable of Binding.
    """
    addr = ipaddress.ip_address(address)
    best = None
    for b in bindings:
        if b.protocol != protocol or b.network.version != addr.version or addr not in b.network:
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
        packed_net = network.network_address.packed
        packed_mask = network.netmask.packed
        words = []
        for i in range(0, len(packed_net), 4):
            mask = struct.unpack('>I', packed_mask[i:i + 4])[0]
            if mask:
                net = struct.unpack('>I', packed_net[i:i + 4])[0]
                words.append({'mask': '0x%08x' % mask, 'net': '0x%08x' % net})
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
