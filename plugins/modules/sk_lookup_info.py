#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: sk_lookup_info
short_description: Read a sk_lookup dispatcher's state from the kernel
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Reads the program, bindings, destinations (with their sockets and counters) and protected
    rules of a dispatcher instance from its pinned BPF objects. The kernel is the only source of
    truth; there are no side files.
  - Never changes anything.
extends_documentation_fragment:
  - bpfsteer.sk_lookup.instance
attributes:
  check_mode:
    support: full
    description: Reads only, so it runs unchanged in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no difference to show.
  platform:
    support: full
    platforms: linux
    description: BPF socket lookup is a feature of the Linux kernel.
seealso:
  - module: bpfsteer.sk_lookup.sk_lookup_program
'''

EXAMPLES = r'''
- name: Read the dispatcher
  bpfsteer.sk_lookup.sk_lookup_info:
  register: dispatcher

- name: Fail when a destination lost its socket
  ansible.builtin.assert:
    that: dispatcher.destinations | selectattr('socket_cookie', 'none') | list | length == 0
    fail_msg: >-
      Destinations without a socket:
      {{ dispatcher.destinations | selectattr('socket_cookie', 'none') | map(attribute='label') | list }}

- name: Read an instance attached to another namespace
  bpfsteer.sk_lookup.sk_lookup_info:
    instance: edge
'''

RETURN = r'''
loaded:
  description: Whether a dispatch program is pinned for the instance.
  returned: always
  type: bool
  sample: true
pin_dir:
  description: Directory of the instance's pins.
  returned: always
  type: str
  sample: /sys/fs/bpf/sk_lookup/dispatch
program:
  description: The loaded program; null when nothing is loaded.
  returned: always
  type: dict
  contains:
    id:
      description: Kernel program id.
      type: int
    tag:
      description: Kernel tag of the program.
      type: str
    name:
      description: Program name.
      type: str
    source_sha256:
      description: sha256 of the C source it was compiled from.
      type: str
    netns_inode:
      description: Inode of the attached network namespace; null if the namespace is gone.
      type: int
    attached:
      description: Whether the link is attached to a live namespace.
      type: bool
    link_id:
      description: Kernel id of the BPF link.
      type: int
    missing_socket:
      description: What the program does with a matched packet whose destination has no socket.
      type: str
    max_bindings:
      description: Most bindings the instance may hold (the template's C(max_bindings)).
      type: int
    table_capacity:
      description:
        - Entries the bindings table the program reads has room for now.
        - Tables are sized to the set they hold (a power of two with a quarter of headroom, at least 64,
          at most the template's C(max_bindings)) and rebuilt when the set outgrows them or shrinks to a quarter.
      type: int
    prefix_lengths:
      description:
        - Per protocol and family that has bindings, the prefix lengths they use and how the program
          finds them.
        - V(hash) tries one exact-match lookup per length and kind of port (a real port, port 0),
          longest first, at most RV(program.prefix_lengths[].hash_probes) per packet, whatever the
          number of bindings. Past 8 such lookups the set goes to an LPM trie (V(trie)), two walks
          per packet whose length grows with the logarithm of the number of bindings.
      type: list
      elements: dict
      contains:
        protocol:
          description: C(tcp) or C(udp).
          type: str
        family:
          description: C(ipv4) or C(ipv6).
          type: str
        lengths:
          description: The prefix lengths in use, longest first.
          type: list
          elements: int
        lookup:
          description: C(hash) or C(trie).
          type: str
        hash_probes:
          description: Most hash lookups a packet costs (a miss); null with C(trie).
          type: int
    max_destinations:
      description: Capacity of the sockets and metrics maps.
      type: int
    active_table:
      description: Which of the two bindings tables the program reads.
      type: int
    format:
      description: Version of the pin layout.
      type: int
  sample:
    id: 106
    tag: 379809de6602fd63
    name: dispatch
    source_sha256: 53716ff1084f472f3b3339662ba6a32908095d56e9590600eaa9a504ddba007f
    netns_inode: 4026532177
    attached: true
    link_id: 90
    missing_socket: drop
    max_bindings: 1000000
    table_capacity: 64
    prefix_lengths:
      - {protocol: tcp, family: ipv4, lengths: [32, 24], lookup: hash, hash_probes: 3}
    max_destinations: 1024
    active_table: 0
    format: 2
bindings:
  description: Every binding the program reads now, normalised.
  returned: always
  type: list
  elements: dict
  sample:
    - {protocol: tcp, prefix: 127.0.0.1/32, port: 7, label: echo}
destinations:
  description: One entry per (label, family, protocol) with its socket and counters.
  returned: always
  type: list
  elements: dict
  contains:
    label:
      description: Label name.
      type: str
    family:
      description: C(ipv4) or C(ipv6).
      type: str
    protocol:
      description: C(tcp) or C(udp).
      type: str
    id:
      description: Destination id (index into the sockets map).
      type: int
    socket_cookie:
      description: Cookie of the registered socket; null when none is registered.
      type: int
    lookups:
      description: Lookups that matched a binding of this destination.
      type: int
    misses:
      description: Of those, how many found no socket.
      type: int
    errors:
      description: Of those, how many the kernel refused to assign to the socket.
      type: int
    owner:
      description:
        - The registered socket's local address and port and the process holding it (C(pid),
          C(command)), found through sock_diag and C(/proc); null when there is no socket or it
          could not be found.
      type: dict
  sample:
    - label: echo
      family: ipv4
      protocol: tcp
      id: 0
      socket_cookie: 4097
      lookups: 3
      misses: 0
      errors: 0
      owner: {address: 127.0.0.1, port: 7777, pid: 1289, command: ncat}
protected:
  description: The rules compiled into the program that it never steers.
  returned: always
  type: list
  elements: dict
  sample:
    - {protocol: tcp, prefix: 0.0.0.0/0, port: 22}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import module_support as ms


def main():
    module = AnsibleModule(argument_spec=ms.instance_args(), supports_check_mode=True)
    ms.require_environment(module)
    pin_dir = ms.pin_dir_of(module)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d

    def body():
        if not d.is_bpffs(module.params['bpffs']):
            return {'loaded': False, 'program': None, 'bindings': [], 'destinations': [],
                    'protected': [], 'pin_dir': pin_dir}
        state = d.snapshot(pin_dir)
        if state['loaded']:
            from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd
            owners = sd.socket_owners([dest['socket_cookie'] for dest in state['destinations']],
                                      state['program']['netns_inode'])
            for dest in state['destinations']:
                dest['owner'] = owners.get(dest['socket_cookie'])
        return state

    module.exit_json(changed=False, **ms.run(module, body))


if __name__ == '__main__':
    main()
