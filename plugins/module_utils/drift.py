# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare what a host's variables ask for with what its kernel holds.

Pure logic over plain data: the desired bindings and sockets (role variables)
and a ``sk_lookup_info`` result. Used by the audit playbook through the
``sk_lookup_drift`` filter.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd


def _socket_key(entry):
    """(label, family or None, protocol or None) a socket entry promises to serve."""
    family = entry.get('family')
    address = entry.get('address')
    if family is None and address:
        family = 'ipv6' if ':' in str(address) else 'ipv4'
    return entry['label'], family, entry.get('protocol')


def drift(info, bindings, sockets=None, source_sha256=None):
    """A report: {'in_sync', 'problems' (one line each), and the details}."""
    report = {'loaded': bool(info.get('loaded')), 'missing_bindings': [], 'unexpected_bindings': [],
              'relabeled_bindings': [], 'sockets_missing': [], 'program': 'ok', 'problems': []}
    if not info.get('loaded'):
        report['program'] = 'not loaded'
        report['problems'].append('the dispatcher is not loaded')
        report['in_sync'] = False
        return report
    program = info.get('program') or {}
    if not program.get('attached'):
        report['program'] = 'detached'
        report['problems'].append('the program is not attached to a network namespace')
    elif source_sha256 and program.get('source_sha256') != source_sha256:
        report['program'] = 'source differs'
        report['problems'].append('the loaded program (source sha256 %s) is not the one the variables render (%s)'
                                  % (program.get('source_sha256'), source_sha256))

    desired = bnd.parse_bindings(bindings or [])
    actual = bnd.parse_bindings(info.get('bindings') or [])
    change = bnd.Change(actual, desired)
    for b in bnd.sort_bindings(change.added):
        report['missing_bindings'].append(str(b))
        report['problems'].append('missing binding %s' % (b,))
    for b in bnd.sort_bindings(change.removed):
        report['unexpected_bindings'].append(str(b))
        report['problems'].append('unexpected binding %s' % (b,))
    for old, new in change.relabeled:
        report['relabeled_bindings'].append('%s (kernel: %s)' % (new, old.label))
        report['problems'].append('binding %s points at %s' % (new, old.label))

    served = {}
    for dest in info.get('destinations') or []:
        if dest.get('socket_cookie'):
            served.setdefault(dest['label'], []).append((dest['family'], dest['protocol']))
    for entry in sockets or []:
        label, family, protocol = _socket_key(entry)
        ok = any((family in (None, f)) and (protocol in (None, p)) for f, p in served.get(label, []))
        if not ok:
            what = ' '.join(x for x in (label, family, protocol) if x)
            report['sockets_missing'].append(what)
            report['problems'].append('no socket registered for %s' % what)
    report['in_sync'] = not report['problems']
    return report
