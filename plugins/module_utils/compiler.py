# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile dispatch C with BCC into relocatable bytecode.

BCC is used as a compiler only: it turns the C into instructions whose map
references are ``ld_imm64`` with ``BPF_PSEUDO_MAP_FD``. The loader swaps
those file descriptors for the pinned maps of an instance, which is what
lets an upgrade keep every binding and socket.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import platform
import re
import struct
import tempfile

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bpf_syscalls as bpf

ENTRY_FUNCTION = 'dispatch'
BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1

try:
    from bcc import BPF as _BCC  # noqa: F401  (availability probe)
    HAS_BCC = True
    BCC_IMPORT_ERROR = None
except Exception as exc:  # pylint: disable=broad-except
    HAS_BCC = False
    BCC_IMPORT_ERROR = exc


class CompileError(Exception):
    pass


class MapSpec(object):
    """What the kernel says about one map a compiled program references."""

    def __init__(self, name, map_type, key_size, value_size, max_entries, flags):
        self.name = name
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags

    @classmethod
    def of_fd(cls, fd):
        info = bpf.map_info(fd)
        return cls(info.name.decode(), info.type, info.key_size, info.value_size,
                   info.max_entries, info.map_flags)

    def differences(self, other):
        """Human-readable list of what differs from ``other`` (same name)."""
        out = []
        for attr, label in (('map_type', 'type'), ('key_size', 'key size'),
                            ('value_size', 'value size'), ('max_entries', 'max_entries'),
                            ('flags', 'flags')):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            if mine != theirs:
                if attr == 'map_type':
                    mine, theirs = bpf.MAP_TYPE_NAMES.get(mine, mine), bpf.MAP_TYPE_NAMES.get(theirs, theirs)
                out.append('map %s: %s %s in the new source, %s in the loaded instance'
                           % (self.name, label, mine, theirs))
        return out

    def as_dict(self):
        return {'name': self.name, 'type': bpf.MAP_TYPE_NAMES.get(self.map_type, self.map_type),
                'key_size': self.key_size, 'value_size': self.value_size,
                'max_entries': self.max_entries, 'flags': self.flags}


class Compiled(object):
    """Instructions plus one owned map fd per referenced map (BCC's own maps).

    The maps are fresh and empty; the loader pins them for a new instance or
    swaps in the pinned ones for an upgrade. Call close() when done.
    """

    def __init__(self, insns, maps):
        self.insns = insns
        self.maps = maps            # name -> (FD, MapSpec)
        self._fd_names = {}

    def relocated(self, fds_by_name):
        """The instructions with each map reference pointing at fds_by_name[name]."""
        code = bytearray(self.insns)
        for off in range(0, len(code) - 8, 8):
            op, regs = code[off], code[off + 1]
            if op == BPF_LD_IMM64 and (regs >> 4) == BPF_PSEUDO_MAP_FD:
                old = struct.unpack_from('<i', code, off + 4)[0]
                name = self._fd_names[old]
                struct.pack_into('<i', code, off + 4, int(fds_by_name[name]))
        return bytes(code)

    def close(self):
        for fd, _spec in self.maps.values():
            fd.close()
        self.maps = {}


def headers_problem():
    """A message if BCC cannot find a kernel header tree, else None."""
    release = platform.release()
    build = '/lib/modules/%s/build' % release
    if os.path.isdir(os.path.join(build, 'include')) or os.path.exists('/sys/kernel/kheaders.tar.xz'):
        return None
    return ('BCC needs kernel headers for %s at %s and none are there. Install '
            '"linux-headers-%s" if your distribution has it; otherwise the dispatch program only '
            'uses UAPI definitions, so any installed header tree works: '
            'ln -s /usr/src/linux-headers-<version>-<arch> %s and '
            'ln -s /usr/src/linux-headers-<version>-common /lib/modules/%s/source '
            '(Debian), or load the kheaders module (CONFIG_IKHEADERS).'
            % (release, build, release, build, release))


_NOISE = re.compile(r'modprobe: not found|^In file included from|^\d+ warnings? generated')


def compile_source(source):
    """Compile with BCC; raise CompileError carrying the compiler's message."""
    if not HAS_BCC:
        raise CompileError('BCC is not importable: %s' % BCC_IMPORT_ERROR)
    problem = headers_problem()
    if problem:
        raise CompileError(problem)
    from bcc import BPF

    # BCC prints clang diagnostics to fd 2; catch them to put in the error.
    saved = os.dup(2)
    failure = None
    with tempfile.TemporaryFile() as err:
        os.dup2(err.fileno(), 2)
        try:
            try:
                module = BPF(text=source.encode(), cflags=['-Wno-unused-function'])
            except Exception as exc:  # pylint: disable=broad-except
                failure = exc
                module = None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        diagnostics = err.read().decode(errors='replace')
    if module is None:
        lines = [ln for ln in diagnostics.splitlines() if ln.strip() and not _NOISE.search(ln)]
        if any('kconfig.h' in ln or 'Unable to find kernel headers' in ln for ln in lines):
            raise CompileError('BCC found no usable kernel header tree for %s: %s'
                               % (platform.release(), '\n'.join(lines[-5:])))
        raise CompileError('compiling the dispatch program failed: %s\n%s'
                           % (failure, '\n'.join(lines[-30:])))
    try:
        try:
            insns = module.dump_func(ENTRY_FUNCTION)
        except Exception:  # pylint: disable=broad-except
            raise CompileError('the source has no function "%s(struct bpf_sk_lookup *ctx)", '
                               'the entry point of a dispatch program' % ENTRY_FUNCTION)
        compiled = Compiled(insns, {})
        for off in range(0, len(insns) - 8, 8):
            op, regs = insns[off], insns[off + 1]
            if op == BPF_LD_IMM64 and (regs >> 4) == BPF_PSEUDO_MAP_FD:
                fd = struct.unpack_from('<i', insns, off + 4)[0]
                if fd in compiled._fd_names:
                    continue
                spec = MapSpec.of_fd(fd)
                compiled._fd_names[fd] = spec.name
                compiled.maps[spec.name] = (bpf.FD(os.dup(fd)), spec)
        return compiled
    finally:
        module.cleanup()
