#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: sk_lookup_program
short_description: Load, upgrade or remove the sk_lookup dispatch program of a network namespace
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Compiles the dispatch program with BCC, loads it as a C(BPF_PROG_TYPE_SK_LOOKUP) program, creates
    and pins its maps and attaches it to a network namespace with a pinned BPF link.
  - Idempotent without compiling; the sha256 of the loaded source is kept in the kernel (the
    C(meta) map) and compared with the requested source.
  - A different source is an in-place upgrade; the link is updated to the new program and the
    pinned maps are kept, so bindings and registered sockets survive and no new connection is
    refused during the swap. A source whose maps differ from the pinned ones is refused.
  - Runs on one instance are serialised with a lock under C(/run/lock/bpfsteer-sk_lookup).
extends_documentation_fragment:
  - bpfsteer.sk_lookup.instance
  - bpfsteer.sk_lookup.instance.check_mode
options:
  netns:
    description:
      - Path of the network namespace file to attach to, for example C(/run/netns/edge) or
        C(/proc/1234/ns/net).
      - The default is the namespace the module runs in.
    type: path
    default: /proc/self/ns/net
  src:
    description:
      - Path on the managed host of the dispatch C source, usually rendered from the collection's
        C(bpf/dispatch.c.j2) with M(ansible.builtin.template) (the C(dispatcher) role does this).
      - Mutually exclusive with O(content).
    type: path
  content:
    description:
      - The dispatch C source itself. Mutually exclusive with O(src).
    type: str
  state:
    description:
      - V(present) loads or upgrades the program; V(absent) unpins the link and every map, so the
        kernel's normal socket lookup takes over again.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - BCC for Python 3 on the managed host (Debian package C(python3-bpfcc)) and a kernel header tree
    at C(/lib/modules/$(uname -r)/build), for O(state=present)
notes:
  - Map sizes are compiled into the source. Changing them is an incompatible upgrade; remove the
    instance and load it again.
seealso:
  - module: bpfsteer.sk_lookup.sk_lookup_info
  - module: bpfsteer.sk_lookup.sk_lookup_binding
  - module: bpfsteer.sk_lookup.sk_lookup_socket
'''

EXAMPLES = r'''
- name: Render the dispatch program for this host
  ansible.builtin.template:
    # bpf/dispatch.c.j2 of the installed collection
    src: "{{ collection_path }}/bpf/dispatch.c.j2"
    dest: /etc/bpfsteer/dispatch.c
    mode: "0644"
  vars:
    missing_socket: drop
    protected:
      - {protocol: tcp, prefix: 0.0.0.0/0, port: 22}

- name: Load it into the host's own network namespace
  bpfsteer.sk_lookup.sk_lookup_program:
    src: /etc/bpfsteer/dispatch.c
  become: true

- name: A second dispatcher for a container's namespace
  bpfsteer.sk_lookup.sk_lookup_program:
    instance: edge
    netns: /run/netns/edge
    src: /etc/bpfsteer/dispatch.c

- name: Remove it; the normal socket lookup takes over
  bpfsteer.sk_lookup.sk_lookup_program:
    instance: edge
    state: absent
'''

RETURN = r'''
action:
  description: What was done (or, in check mode, would be done).
  returned: always
  type: str
  choices: [none, load, upgrade, reattach, remove]
  sample: load
compiled:
  description: Whether the source was compiled in this run. False when the same source is loaded.
  returned: always
  type: bool
  sample: false
pin_dir:
  description: Directory of the instance's pins.
  returned: always
  type: str
  sample: /sys/fs/bpf/sk_lookup/dispatch
program:
  description: The resulting program state.
  returned: always
  type: dict
  contains:
    loaded:
      description: Whether a dispatch program is pinned for this instance.
      type: bool
    attached:
      description: Whether its link is attached to a live network namespace.
      type: bool
    source_sha256:
      description: sha256 of the loaded C source.
      type: str
    program_id:
      description: Kernel id of the program (null in check mode before a load).
      type: int
    program_tag:
      description: The kernel's tag (hash of the instructions) of the program.
      type: str
    netns_inode:
      description: Inode of the network namespace the link is attached to.
      type: int
  sample:
    loaded: true
    attached: true
    source_sha256: 53716ff1084f472f3b3339662ba6a32908095d56e9590600eaa9a504ddba007f
    program_id: 106
    program_tag: 379809de6602fd63
    netns_inode: 4026532177
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import module_support as ms


def _read_source(module):
    if module.params['content'] is not None:
        return module.params['content']
    path = module.params['src']
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8')
    except (IOError, OSError) as exc:
        module.fail_json(msg='cannot read src %s: %s' % (path, exc.strerror))
    except UnicodeDecodeError:
        module.fail_json(msg='src %s is not UTF-8 text' % path)


def present(module, pin_dir):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import compiler

    source = _read_source(module)
    bpffs = module.params['bpffs']
    netns_ino = d.netns_inode(module.params['netns'])
    if module.check_mode and not d.is_bpffs(bpffs):
        plan, disp = d.Plan('load', d.program_state(pin_dir, netns_ino)[0]), None
    else:
        if not module.check_mode:
            d.ensure_bpffs(bpffs)
        plan, disp = d.plan_program(pin_dir, netns_ino, d.source_sha256(source))
    try:
        after = plan.before
        if plan.action != 'none':
            if not compiler.HAS_BCC:
                module.fail_json(msg=missing_required_lib('bcc (Debian package python3-bpfcc)'),
                                 exception=str(compiler.BCC_IMPORT_ERROR))
            after = d.install(pin_dir, module.params['netns'], source, plan, disp,
                              check_mode=module.check_mode)
    finally:
        if disp is not None:
            disp.close()
    return plan.action, plan.before, after


def absent(module, pin_dir):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d
    import os

    empty = {'loaded': False, 'attached': False, 'source_sha256': None, 'program_id': None,
             'program_tag': None, 'netns_inode': None}
    if not d.is_bpffs(module.params['bpffs']) or not os.path.isdir(pin_dir):
        return 'none', empty, empty
    try:
        before, disp = d.program_state(pin_dir, None)
    except d.FormatMismatch as exc:
        # another version's layout: it cannot be read, but it can be removed
        module.warn(str(exc).split(';', maxsplit=1)[0] + '; removing it')
        before, disp = dict(empty, loaded=True), None
    if disp is not None:
        disp.close()
    if not module.check_mode:
        d.remove(pin_dir)
    return 'remove', before, empty


def main():
    module = AnsibleModule(
        argument_spec=ms.instance_args(
            netns=dict(type='path', default='/proc/self/ns/net'),
            src=dict(type='path'),
            content=dict(type='str'),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        mutually_exclusive=[('src', 'content')],
        required_if=[('state', 'present', ('src', 'content'), True)],
        supports_check_mode=True,
    )
    ms.require_environment(module)
    pin_dir = ms.pin_dir_of(module)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d

    def body():
        with d.InstanceLock(pin_dir):
            if module.params['state'] == 'present':
                return present(module, pin_dir)
            return absent(module, pin_dir)

    action, before, after = ms.run(module, body)
    result = dict(changed=action != 'none', action=action, compiled=action in ('load', 'upgrade', 'reattach'),
                  pin_dir=pin_dir, program=after)
    if module._diff:
        result['diff'] = dict(before=before, after=after,
                              before_header='%s (before)' % pin_dir, after_header='%s (after)' % pin_dir)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
