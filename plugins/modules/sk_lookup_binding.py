#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: sk_lookup_binding
short_description: Manage the bindings of a sk_lookup dispatcher, one at a time or as a whole set
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - A binding sends new TCP connections or UDP datagrams for (O(protocol), O(prefix), O(port)) to
    the socket registered for a label (see M(bpfsteer.sk_lookup.sk_lookup_socket)).
  - Precedence in the data path; the longest prefix wins; at equal prefix length a specific port
    beats port 0 (every port).
  - Host bits of a prefix are masked off (C(10.1.2.3/8) is C(10.0.0.0/8)) and the results show the
    normalised form. IPv4-mapped IPv6 prefixes are refused; write the IPv4 prefix.
  - A binding that exists with another label is relabelled in place.
  - Every change, even to one binding, is applied to the idle copy of the bindings table and
    becomes visible with one map update that switches the program to it. A lookup sees the old set
    or the new set, never a mix, so a connection that both sets send to the same label is never
    misdirected or refused during a replacement.
  - Everything is validated before anything changes; one bad entry fails the whole call with a
    message naming it, and nothing is changed.
  - A binding entirely covered by a rule of the program's C(protected) list is refused (the program
    would never steer it); one that only overlaps a rule is applied with a warning.
extends_documentation_fragment:
  - bpfsteer.sk_lookup.instance
  - bpfsteer.sk_lookup.instance.check_mode
options:
  label:
    description:
      - Label of the destination for a single binding; 1 to 63 printable ASCII characters without
        spaces.
      - With O(state=absent) optional; when given, the binding is removed only while it points at
        this label.
    type: str
  protocol:
    description: Protocol of a single binding.
    type: str
    choices: [tcp, udp]
  prefix:
    description:
      - IPv4 or IPv6 prefix in CIDR notation of a single binding; a bare address means C(/32) or
        C(/128).
    type: str
  port:
    description: Local port of a single binding; 0 means every port.
    type: int
  bindings:
    description:
      - Many bindings, each a dict with the keys C(label), C(protocol), C(prefix) and C(port), which
        mean what the options of the same names mean. C(label) may be left out with
        O(state=absent).
      - Listing the same binding twice with two labels is an error.
      - >-
        The list may also be given as one JSON string, which is much faster for very large sets
        because Ansible then templates one string instead of every entry; for example
        C(bindings: "{{ my_bindings | to_json }}").
      - Mutually exclusive with O(label), O(protocol), O(prefix) and O(port).
    type: raw
  exclusive:
    description:
      - With O(bindings) and O(state=present), remove every binding that is not listed, so the list
        is the whole desired set. An empty list then removes every binding.
    type: bool
    default: false
  return_bindings:
    description:
      - Return every binding of the instance after the call in RV(bindings).
      - With hundreds of thousands of bindings the list is tens of megabytes per host, which costs
        more than applying them; set V(false) and rely on RV(count) and RV(summary), or read the
        state with M(bpfsteer.sk_lookup.sk_lookup_info).
    type: bool
    default: true
  return_changes:
    description:
      - Return the lists RV(added), RV(removed) and RV(changed_labels).
      - A first apply of 100,000 bindings lists all of them in RV(added), several megabytes per host
        that Ansible must carry; with V(false) the lists are left out and RV(summary) still counts
        every change. Diff mode shows the changes either way.
    type: bool
    default: true
  state:
    description: Whether the bindings should be there.
    type: str
    choices: [present, absent]
    default: present
notes:
  - In check mode against an instance that is not loaded yet, changes are reported against an empty
    dispatcher, which is what a real run after loading would find.
seealso:
  - module: bpfsteer.sk_lookup.sk_lookup_program
  - module: bpfsteer.sk_lookup.sk_lookup_socket
  - module: bpfsteer.sk_lookup.sk_lookup_info
'''

EXAMPLES = r'''
- name: Send HTTPS for a whole /24 to the web label
  bpfsteer.sk_lookup.sk_lookup_binding:
    label: web
    protocol: tcp
    prefix: 192.0.2.0/24
    port: 443

- name: One echo service on every port of an address
  bpfsteer.sk_lookup.sk_lookup_binding:
    label: echo
    protocol: tcp
    prefix: 198.51.100.7
    port: 0

- name: The whole desired set for this host; anything else is removed
  bpfsteer.sk_lookup.sk_lookup_binding:
    instance: edge
    exclusive: true
    bindings:
      - {label: dns, protocol: udp, prefix: 192.0.2.0/24, port: 53}
      - {label: dns, protocol: udp, prefix: "2001:db8::/32", port: 53}
      - {label: web, protocol: tcp, prefix: 192.0.2.0/24, port: 443}

- name: Remove a binding, whatever its label
  bpfsteer.sk_lookup.sk_lookup_binding:
    protocol: tcp
    prefix: 192.0.2.0/24
    port: 443
    state: absent
'''

RETURN = r'''
added:
  description: Bindings added (or that check mode would add).
  returned: when O(return_changes=true)
  type: list
  elements: dict
  sample:
    - {protocol: tcp, prefix: 192.0.2.0/24, port: 443, label: web}
removed:
  description: Bindings removed.
  returned: when O(return_changes=true)
  type: list
  elements: dict
  sample: []
changed_labels:
  description: Bindings that now point at another label.
  returned: when O(return_changes=true)
  type: list
  elements: dict
  contains:
    protocol:
      description: C(tcp) or C(udp).
      type: str
    prefix:
      description: Normalised prefix.
      type: str
    port:
      description: Port, 0 for every port.
      type: int
    old_label:
      description: Label before.
      type: str
    label:
      description: Label after.
      type: str
  sample:
    - {protocol: tcp, prefix: 192.0.2.0/24, port: 443, old_label: web, label: web-v2}
bindings:
  description: Every binding of the instance after the call, normalised and sorted.
  returned: when O(return_bindings=true)
  type: list
  elements: dict
  sample:
    - {protocol: tcp, prefix: 192.0.2.0/24, port: 443, label: web}
count:
  description: Number of bindings of the instance after the call.
  returned: always
  type: int
  sample: 1
summary:
  description: How many bindings were (or in check mode would be) added, removed and relabelled.
  returned: always
  type: dict
  contains:
    added:
      description: Number of bindings added.
      type: int
    removed:
      description: Number of bindings removed.
      type: int
    changed_labels:
      description: Number of bindings that now point at another label.
      type: int
  sample: {added: 1, removed: 0, changed_labels: 0}
'''

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import module_support as ms

SINGLE = ('label', 'protocol', 'prefix', 'port')
INVOCATION_LIMIT = 1000


def listed_bindings(module):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    p = module.params
    require_label = p['state'] == 'present'
    if p['bindings'] is not None:
        entries = p['bindings']
        if isinstance(entries, str):
            try:
                entries = json.loads(entries)
            except ValueError as exc:
                raise bnd.BindingError('bindings is a string but not JSON: %s' % exc)
        if not isinstance(entries, list):
            raise bnd.BindingError('bindings must be a list of dicts (or that list as JSON), got %s'
                                   % type(entries).__name__)
        return bnd.parse_bindings(entries, require_label)
    entry = dict((k, p[k]) for k in SINGLE if p[k] is not None or k == 'label')
    try:
        return bnd.parse_bindings([entry], require_label)
    except bnd.BindingError as exc:
        # a single binding is not "bindings[0]" to the user
        raise bnd.BindingError(str(exc).replace('bindings[0] ', '', 1).replace('bindings[0]', 'binding'))


def check_protection(module, change, rules):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    refused = []
    for binding in change.added + [new for _old, new in change.relabeled]:
        level, rule = bnd.protection_of(binding, rules)
        if level == 'full':
            refused.append('%s falls under the protected rule %s compiled into the program, which '
                           'never steers it' % (binding, bnd.format_match(*rule)))
        elif level == 'partial':
            module.warn('%s overlaps the protected rule %s; the program will not steer the protected '
                        'part' % (binding, bnd.format_match(*rule)))
    if refused:
        raise bnd.BindingError('; '.join(refused) + '. Nothing was changed.')


def apply(module, pin_dir):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d

    p = module.params
    listed = listed_bindings(module)
    disp = None
    if d.is_bpffs(p['bpffs']):
        disp = d.open_dispatcher(pin_dir)
    if disp is None:
        if not module.check_mode:
            raise d.DispatcherError('instance %r is not loaded (no pins at %s); load it with '
                                    'bpfsteer.sk_lookup.sk_lookup_program first' % (p['instance'], pin_dir))
        module.warn('instance %r is not loaded; changes are reported against an empty dispatcher'
                    % p['instance'])
        change, skipped = bnd.plan({}, listed, p['state'], p['exclusive'])
        return change, skipped, listed
    with disp:
        change, skipped = bnd.plan(disp.bindings(), listed, p['state'], p['exclusive'])
        check_protection(module, change, disp.protected())
        if len(change.desired) > disp.max_bindings:
            raise d.DispatcherError('%d bindings do not fit: instance %r holds at most %d (max_bindings); '
                                    'nothing was changed' % (len(change.desired), p['instance'], disp.max_bindings))
        needed = set((b.label, b.family, b.protocol) for b in change.desired.values())
        have = disp.destinations_raw()
        cookies = disp.socket_cookies()
        keep = set(k for k, v in have.items() if v in cookies)
        total = len(needed | set((lbl, fam, bnd.PROTOCOL_NAMES.get(pr)) for lbl, fam, pr in keep))
        if total > disp.max_destinations:
            raise d.DispatcherError('the bindings need %d destinations (label, family, protocol) but instance '
                                    '%r holds at most %d (max_destinations); nothing was changed'
                                    % (total, p['instance'], disp.max_destinations))
        if change.changed and not module.check_mode:
            disp.replace_bindings(change.desired)
    return change, skipped, listed


def main():
    module = AnsibleModule(
        argument_spec=ms.instance_args(
            label=dict(type='str'),
            protocol=dict(type='str', choices=['tcp', 'udp']),
            prefix=dict(type='str'),
            port=dict(type='int'),
            bindings=dict(type='raw'),
            exclusive=dict(type='bool', default=False),
            return_bindings=dict(type='bool', default=True),
            return_changes=dict(type='bool', default=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        mutually_exclusive=[('bindings', k) for k in SINGLE],
        required_one_of=[('bindings', 'prefix')],
        required_by={'prefix': ('protocol', 'port')},
        required_if=[('exclusive', True, ('bindings',))],
        supports_check_mode=True,
    )
    if module.params['exclusive'] and module.params['state'] == 'absent':
        module.fail_json(msg='exclusive=true only makes sense with state=present')
    if module.params['prefix'] is not None and module.params['state'] == 'present' and not module.params['label']:
        module.fail_json(msg='label is required to add a binding (state=present)')
    ms.require_environment(module)
    pin_dir = ms.pin_dir_of(module)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d

    def body():
        with d.InstanceLock(pin_dir):
            return apply(module, pin_dir)

    change, skipped, listed = ms.run(module, body)
    for binding in skipped:
        module.warn('%s was left in place: it points at %r, not at the label given for removal'
                    % (bnd.format_match(binding.protocol, binding.network, binding.port), binding.label))
    result = dict(
        changed=change.changed,
        count=len(change.desired),
        summary=dict(added=len(change.added), removed=len(change.removed),
                     changed_labels=len(change.relabeled)),
    )
    if module.params['return_changes']:
        result.update(
            added=[b.as_dict() for b in bnd.sort_bindings(change.added)],
            removed=[b.as_dict() for b in bnd.sort_bindings(change.removed)],
            changed_labels=[dict(new.as_dict(), old_label=old.label)
                            for old, new in sorted(change.relabeled, key=lambda pair: bnd.sort_key(pair[1]))],
        )
    if module.params['return_bindings']:
        result['bindings'] = [b.as_dict() for b in bnd.sort_bindings(change.desired.values())]
    if module._diff:
        before, after = change.diff_lines()
        header = 'bindings of %s' % pin_dir
        result['diff'] = dict(before=before, after=after, before_header=header, after_header=header)
    if len(listed) > INVOCATION_LIMIT:
        # Echoing 100,000 entries back doubles the result for nothing; say what was given.
        args = dict(module.params, bindings='<%d bindings>' % len(listed))
        result['invocation'] = {'module_args': args}
    module.exit_json(**result)


if __name__ == '__main__':
    main()
