# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: sk_lookup_bindings
short_description: Validate and normalise a list of sk_lookup bindings on the controller
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Checks every binding (label, protocol, prefix, port) exactly as M(bpfsteer.sk_lookup.sk_lookup_binding)
    does and returns the list normalised (host bits masked off, duplicates folded), so a play can
    refuse bad input before it changes anything on any host.
  - Raises an error naming the offending entry.
options:
  _input:
    description: List of dicts with C(label), C(protocol), C(prefix) and C(port).
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
- name: Refuse bad bindings before touching the host
  ansible.builtin.set_fact:
    wanted: "{{ my_bindings | bpfsteer.sk_lookup.sk_lookup_bindings }}"
'''

RETURN = r'''
_value:
  description: The bindings, normalised and sorted.
  type: list
  elements: dict
'''

from ansible.errors import AnsibleFilterError
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd


def sk_lookup_bindings(entries):
    try:
        parsed = bnd.parse_bindings(entries)
    except bnd.BindingError as exc:
        raise AnsibleFilterError(str(exc))
    return [b.as_dict() for b in bnd.sort_bindings(parsed.values())]


class FilterModule(object):
    def filters(self):
        return {'sk_lookup_bindings': sk_lookup_bindings}
