# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters used to render the dispatch program template."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: sk_lookup_protected
short_description: Normalise a protected list into the constants of the dispatch program
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Takes the C(protected) list of the dispatch program (dicts with C(protocol), C(prefix), C(port))
    and returns one dict per rule with the masked prefix and the 32-bit masks and networks that
    C(bpf/dispatch.c.j2) compares against.
  - Raises an error naming the offending entry when a rule is invalid.
options:
  _input:
    description: List of dicts with C(protocol) (C(tcp) or C(udp)), C(prefix) (CIDR) and C(port) (0 = every port).
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
- name: Show how the SSH rule is compiled
  ansible.builtin.debug:
    msg: "{{ [{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22}] | bpfsteer.sk_lookup.sk_lookup_protected }}"
'''

RETURN = r'''
_value:
  description: One dict per rule with C(protocol), C(prefix), C(port), C(ipproto), C(af), C(version) and C(words).
  type: list
  elements: dict
'''

from ansible.errors import AnsibleFilterError
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils.bindings import (
    BindingError, protected_c_rules)


def sk_lookup_protected(entries):
    try:
        return protected_c_rules(entries)
    except BindingError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):
    def filters(self):
        return {'sk_lookup_protected': sk_lookup_protected}
