# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules share: the instance options and turning failures into fail_json."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import traceback

INSTANCE_ARGS = dict(
    instance=dict(type='str', default='dispatch'),
    bpffs=dict(type='path', default='/sys/fs/bpf'),
)

try:
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bpf_syscalls as bpf
    bpf.libbpf()
    LIBBPF_ERROR = None
    LIBBPF_TRACEBACK = None
except Exception as exc:  # pylint: disable=broad-except
    LIBBPF_ERROR = exc
    LIBBPF_TRACEBACK = traceback.format_exc()


def instance_args(**extra):
    spec = dict(INSTANCE_ARGS)
    spec.update(extra)
    return spec


def require_environment(module):
    """Fail early and plainly when the host cannot run the dispatcher."""
    from ansible.module_utils.basic import missing_required_lib
    if LIBBPF_ERROR is not None:
        module.fail_json(msg=missing_required_lib('libbpf.so.1 (Debian package libbpf1)'),
                         exception=LIBBPF_TRACEBACK)
    if os.geteuid() != 0:
        module.fail_json(msg='permission denied: managing BPF objects needs root '
                             '(become: true), or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN')


def pin_dir_of(module):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher
    try:
        return dispatcher.instance_dir(module.params['bpffs'], module.params['instance'])
    except dispatcher.DispatcherError as exc:
        module.fail_json(msg=str(exc))


def run(module, body):
    """Call body(); report DispatcherError and BPFError as clean failures."""
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings
    try:
        return body()
    except (dispatcher.DispatcherError, bindings.BindingError) as exc:
        module.fail_json(msg=str(exc))
    except bpf.BPFError as exc:
        module.fail_json(msg=str(exc), errno=exc.errno, exception=traceback.format_exc())
