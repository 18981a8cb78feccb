# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Options every module uses to find a dispatcher instance.
    DOCUMENTATION = r'''
options:
  instance:
    description:
      - Name of the dispatcher instance. Its kernel objects are pinned under
        C(<bpffs>/sk_lookup/<instance>/), so several independent dispatchers can live on one host
        (for example one per network namespace).
      - 1 to 64 letters, digits, C(_) or C(-); bpffs reserves C(.).
    type: str
    default: dispatch
  bpffs:
    description:
      - Mount point of the BPF filesystem that holds the pins.
    type: path
    default: /sys/fs/bpf
requirements:
  - Linux 5.9 or later with BPF_PROG_TYPE_SK_LOOKUP
  - root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN
  - libbpf.so.1 on the managed host (Debian package C(libbpf1))
'''

    CHECK_MODE = r'''
attributes:
  check_mode:
    support: full
    description: Reports what would change and changes nothing in the kernel.
  diff_mode:
    support: full
    description: Shows the dispatcher state before and after.
  platform:
    support: full
    platforms: linux
    description: BPF socket lookup is a feature of the Linux kernel.
'''
