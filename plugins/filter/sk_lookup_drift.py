# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: sk_lookup_drift
short_description: Compare a host's dispatcher variables with its kernel state
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Takes the result of M(bpfsteer.sk_lookup.sk_lookup_info) and returns what differs from the
    desired bindings, sockets and program source, one problem per line.
options:
  _input:
    description: The registered result of M(bpfsteer.sk_lookup.sk_lookup_info).
    type: dict
    required: true
  bindings:
    description: The desired bindings (the whole set).
    type: list
    elements: dict
  sockets:
    description: The desired sockets (dicts with at least C(label); C(protocol), C(family), C(address) narrow it).
    type: list
    elements: dict
  source_sha256:
    description: sha256 of the dispatch source the host should run; not compared when omitted.
    type: str
'''

EXAMPLES = r'''
- name: Report drift
  ansible.builtin.debug:
    msg: "{{ info | bpfsteer.sk_lookup.sk_lookup_drift(dispatcher_bindings, dispatcher_sockets) }}"
'''

RETURN = r'''
_value:
  description: C(in_sync), C(problems) (list of lines), C(missing_bindings), C(unexpected_bindings),
    C(relabeled_bindings), C(sockets_missing), C(program), C(loaded).
  type: dict
'''

from ansible.errors import AnsibleFilterError
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils.drift import drift


def sk_lookup_drift(info, bindings=None, sockets=None, source_sha256=None):
    try:
        return drift(info, bindings, sockets, source_sha256)
    except bnd.BindingError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):
    def filters(self):
        return {'sk_lookup_drift': sk_lookup_drift}
