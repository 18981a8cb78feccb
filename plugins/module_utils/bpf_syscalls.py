# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The BPF system calls the dispatcher needs, through Debian's libbpf.so.1.

BCC compiles the dispatch program, but its Python side cannot create links,
pin objects or touch a SOCKMAP, so every kernel object is handled here with
libbpf's low-level API (``bpf.h``), which keeps struct layouts versioned by
their ``sz`` field instead of hand-built ``union bpf_attr`` blobs.

Every call raises :class:`BPFError` carrying errno and the operation name;
file descriptors are plain ints wrapped in :class:`FD` so they close on
every path.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno
import os

BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_SOCKMAP = 15

BPF_F_NO_PREALLOC = 1
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_LINK_TYPE_NETNS = 5

MAP_TYPE_NAMES = {
    BPF_MAP_TYPE_HASH: 'hash',
    BPF_MAP_TYPE_ARRAY: 'array',
    BPF_MAP_TYPE_PERCPU_ARRAY: 'percpu_array',
    BPF_MAP_TYPE_LPM_TRIE: 'lpm_trie',
    BPF_MAP_TYPE_ARRAY_OF_MAPS: 'array_of_maps',
    BPF_MAP_TYPE_SOCKMAP: 'sockmap',
}

LIBBPF_NAMES = ('libbpf.so.1', 'libbpf.so.0')


class BPFError(Exception):
    """A failed BPF operation; ``errno`` is the kernel's answer."""

    def __init__(self, operation, err, detail=None):
        self.operation = operation
        self.errno = err
        self.detail = detail
        msg = '%s failed: %s' % (operation, os.strerror(err) if err else 'unknown error')
        if err in (errno.EPERM, errno.EACCES):
            msg += ' (BPF needs root, or CAP_BPF with CAP_NET_ADMIN)'
        if detail:
            msg += ': %s' % detail
        super(BPFError, self).__init__(msg)


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('btf_fd', ctypes.c_uint32),
        ('btf_key_type_id', ctypes.c_uint32),
        ('btf_value_type_id', ctypes.c_uint32),
        ('btf_vmlinux_value_type_id', ctypes.c_uint32),
        ('inner_map_fd', ctypes.c_uint32),
        ('map_flags', ctypes.c_uint32),
        ('map_extra', ctypes.c_uint64),
        ('numa_node', ctypes.c_uint32),
        ('map_ifindex', ctypes.c_uint32),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('elem_flags', ctypes.c_uint64),
        ('flags', ctypes.c_uint64),
    ]


class _ProgLoadOpts(ctypes.Structure):
    # The libbpf 1.1 layout; newer libbpf accepts it because of ``sz``.
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('attempts', ctypes.c_int),
        ('expected_attach_type', ctypes.c_uint32),
        ('prog_btf_fd', ctypes.c_uint32),
        ('prog_flags', ctypes.c_uint32),
        ('prog_ifindex', ctypes.c_uint32),
        ('kern_version', ctypes.c_uint32),
        ('attach_btf_id', ctypes.c_uint32),
        ('attach_prog_fd', ctypes.c_uint32),
        ('attach_btf_obj_fd', ctypes.c_uint32),
        ('fd_array', ctypes.c_void_p),
        ('func_info', ctypes.c_void_p),
        ('func_info_cnt', ctypes.c_uint32),
        ('func_info_rec_size', ctypes.c_uint32),
        ('line_info', ctypes.c_void_p),
        ('line_info_cnt', ctypes.c_uint32),
        ('line_info_rec_size', ctypes.c_uint32),
        ('log_level', ctypes.c_uint32),
        ('log_size', ctypes.c_uint32),
        ('log_buf', ctypes.c_char_p),
    ]


class _LegacyLoadProgramAttr(ctypes.Structure):
    # libbpf 0.x (Ubuntu 22.04 ships 0.5): struct bpf_load_program_attr.
    _fields_ = [
        ('prog_type', ctypes.c_uint32),
        ('expected_attach_type', ctypes.c_uint32),
        ('name', ctypes.c_char_p),
        ('insns', ctypes.c_void_p),
        ('insns_cnt', ctypes.c_size_t),
        ('license', ctypes.c_char_p),
        ('kern_version', ctypes.c_uint32),
        ('prog_ifindex', ctypes.c_uint32),
        ('prog_btf_fd', ctypes.c_uint32),
        ('func_info_rec_size', ctypes.c_uint32),
        ('func_info', ctypes.c_void_p),
        ('func_info_cnt', ctypes.c_uint32),
        ('line_info_rec_size', ctypes.c_uint32),
        ('line_info', ctypes.c_void_p),
        ('line_info_cnt', ctypes.c_uint32),
        ('log_level', ctypes.c_uint32),
        ('prog_flags', ctypes.c_uint32),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('data_in', ctypes.c_void_p),
        ('data_out', ctypes.c_void_p),
        ('data_size_in', ctypes.c_uint32),
        ('data_size_out', ctypes.c_uint32),
        ('ctx_in', ctypes.c_void_p),
        ('ctx_out', ctypes.c_void_p),
        ('ctx_size_in', ctypes.c_uint32),
        ('ctx_size_out', ctypes.c_uint32),
        ('retval', ctypes.c_uint32),
        ('repeat', ctypes.c_int),
        ('duration', ctypes.c_uint32),
        ('flags', ctypes.c_uint32),
        ('cpu', ctypes.c_uint32),
        ('batch_size', ctypes.c_uint32),
    ]


class MapInfo(ctypes.Structure):
    """Leading part of ``struct bpf_map_info``; the kernel copies min(len)."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('key_size', ctypes.c_uint32),
        ('value_size', ctypes.c_uint32),
        ('max_entries', ctypes.c_uint32),
        ('map_flags', ctypes.c_uint32),
        ('name', ctypes.c_char * 16),
    ]


class ProgInfo(ctypes.Structure):
    """Leading part of ``struct bpf_prog_info``."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('tag', ctypes.c_uint8 * 8),
        ('jited_prog_len', ctypes.c_uint32),
        ('xlated_prog_len', ctypes.c_uint32),
        ('jited_prog_insns', ctypes.c_uint64),
        ('xlated_prog_insns', ctypes.c_uint64),
        ('load_time', ctypes.c_uint64),
        ('created_by_uid', ctypes.c_uint32),
        ('nr_map_ids', ctypes.c_uint32),
        ('map_ids', ctypes.c_uint64),
        ('name', ctypes.c_char * 16),
    ]


class LinkInfo(ctypes.Structure):
    """``struct bpf_link_info`` with only the netns arm of its union."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('prog_id', ctypes.c_uint32),
        ('_pad', ctypes.c_uint32),
        ('netns_ino', ctypes.c_uint32),
        ('attach_type', ctypes.c_uint32),
    ]


_lib = None


def libbpf():
    """Load libbpf once; raise ImportError with the package to install."""
    global _lib
    if _lib is not None:
        return _lib
    lib = None
    for name in LIBBPF_NAMES:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError:
            continue
    if lib is None:
        raise ImportError('libbpf.so.1 not found (install the libbpf1 package)')
    vp, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    # libbpf 1.x API, and the 0.x calls it replaced (0.7 added bpf_map_create/bpf_prog_load).
    lib.legacy = not hasattr(lib, 'bpf_map_create')
    sigs = {
        'bpf_map_create': (c_int, [c_int, ctypes.c_char_p, u32, u32, u32, ctypes.POINTER(_MapCreateOpts)]),
        'bpf_create_map_name': (c_int, [c_int, ctypes.c_char_p, c_int, c_int, c_int, u32]),
        'bpf_load_program_xattr': (c_int, [ctypes.POINTER(_LegacyLoadProgramAttr), ctypes.c_char_p,
                                           ctypes.c_size_t]),
        'bpf_map_update_elem': (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        'bpf_map_lookup_elem': (c_int, [c_int, vp, vp]),
        'bpf_map_delete_elem': (c_int, [c_int, vp]),
        'bpf_map_get_next_key': (c_int, [c_int, vp, vp]),
        'bpf_map_update_batch': (c_int, [c_int, vp, vp, ctypes.POINTER(u32), ctypes.POINTER(_BatchOpts)]),
        'bpf_map_delete_batch': (c_int, [c_int, vp, ctypes.POINTER(u32), ctypes.POINTER(_BatchOpts)]),
        'bpf_map_lookup_batch': (c_int, [c_int, vp, vp, vp, vp, ctypes.POINTER(u32), ctypes.POINTER(_BatchOpts)]),
        'bpf_obj_pin': (c_int, [c_int, ctypes.c_char_p]),
        'bpf_obj_get': (c_int, [ctypes.c_char_p]),
        'bpf_obj_get_info_by_fd': (c_int, [c_int, vp, ctypes.POINTER(u32)]),
        'bpf_prog_load': (c_int, [c_int, ctypes.c_char_p, ctypes.c_char_p, vp, ctypes.c_size_t,
                                  ctypes.POINTER(_ProgLoadOpts)]),
        'bpf_prog_get_fd_by_id': (c_int, [u32]),
        'bpf_map_get_fd_by_id': (c_int, [u32]),
        'bpf_link_create': (c_int, [c_int, c_int, c_int, vp]),
        'bpf_link_update': (c_int, [c_int, c_int, vp]),
        'bpf_prog_test_run_opts': (c_int, [c_int, ctypes.POINTER(_TestRunOpts)]),
    }
    for name, (res, args) in sigs.items():
        if not hasattr(lib, name):
            continue
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    _lib = lib
    return lib


def _check(ret, operation, detail=None):
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BPFError(operation, err, detail)
    return ret


class FD(object):
    """An owned file descriptor; use as a context manager or call close()."""

    def __init__(self, fd):
        self.fd = fd

    def close(self):
        if self.fd is not None and self.fd >= 0:
            os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __int__(self):
        return self.fd


def map_create(map_type, name, key_size, value_size, max_entries, flags=0):
    lib = libbpf()
    if lib.legacy:
        ret = lib.bpf_create_map_name(map_type, name.encode()[:15], key_size, value_size, max_entries, flags)
    else:
        opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags)
        ret = lib.bpf_map_create(map_type, name.encode()[:15], key_size, value_size, max_entries,
                                 ctypes.byref(opts))
    return FD(_check(ret, 'creating map %s' % name))


def obj_pin(fd, path):
    _check(libbpf().bpf_obj_pin(int(fd), path.encode()), 'pinning %s' % path)


def obj_get(path):
    return FD(_check(libbpf().bpf_obj_get(path.encode()), 'opening pinned object %s' % path))


def _info(fd, struct_type, what):
    info = struct_type()
    length = ctypes.c_uint32(ctypes.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(int(fd), ctypes.byref(info), ctypes.byref(length)),
           'reading %s info' % what)
    return info


def map_info(fd):
    return _info(fd, MapInfo, 'map')


def prog_info(fd):
    return _info(fd, ProgInfo, 'program')


def link_info(fd):
    return _info(fd, LinkInfo, 'link')


def prog_map_ids(fd):
    """The ids of the maps a loaded program references."""
    first = prog_info(fd)
    ids = (ctypes.c_uint32 * max(first.nr_map_ids, 1))()
    info = ProgInfo(nr_map_ids=first.nr_map_ids, map_ids=ctypes.addressof(ids))
    length = ctypes.c_uint32(ctypes.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(int(fd), ctypes.byref(info), ctypes.byref(length)),
           'reading program map ids')
    return list(ids[:first.nr_map_ids])


def prog_get_fd_by_id(prog_id):
    return FD(_check(libbpf().bpf_prog_get_fd_by_id(prog_id), 'opening program id %d' % prog_id))


def map_get_fd_by_id(map_id):
    return FD(_check(libbpf().bpf_map_get_fd_by_id(map_id), 'opening map id %d' % map_id))


def prog_load(prog_type, name, insns, expected_attach_type, license_='GPL'):
    """Load raw instructions; on verifier refusal the error carries its log."""
    log = ctypes.create_string_buffer(1 << 20)
    buf = ctypes.create_string_buffer(bytes(insns), len(insns))
    lib = libbpf()
    if lib.legacy:
        return _legacy_prog_load(lib, prog_type, name, buf, len(insns) // 8, expected_attach_type, license_, log)
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=expected_attach_type,
                         log_level=0, log_size=0, log_buf=None)
    ret = lib.bpf_prog_load(prog_type, name.encode()[:15], license_.encode(), buf, len(insns) // 8,
                            ctypes.byref(opts))
    if ret < 0:
        # Reload with the verifier log switched on only to explain the failure.
        opts.log_level, opts.log_size, opts.log_buf = 1, len(log), ctypes.cast(log, ctypes.c_char_p)
        lib.bpf_prog_load(prog_type, name.encode()[:15], license_.encode(), buf, len(insns) // 8,
                          ctypes.byref(opts))
        tail = log.value.decode(errors='replace').strip().splitlines()[-15:]
        _check(ret, 'loading program %s' % name, '\n'.join(tail) or None)
    return FD(ret)


def _legacy_prog_load(lib, prog_type, name, buf, count, expected_attach_type, license_, log):
    attr = _LegacyLoadProgramAttr(prog_type=prog_type, expected_attach_type=expected_attach_type,
                                  name=name.encode()[:15], insns=ctypes.addressof(buf), insns_cnt=count,
                                  license=license_.encode())
    ret = lib.bpf_load_program_xattr(ctypes.byref(attr), None, 0)
    if ret < 0:
        err = ctypes.get_errno()
        attr.log_level = 1
        lib.bpf_load_program_xattr(ctypes.byref(attr), log, len(log))
        tail = log.value.decode(errors='replace').strip().splitlines()[-15:]
        raise BPFError('loading program %s' % name, err, '\n'.join(tail) or None)
    return FD(ret)


def link_create(prog_fd, target_fd, attach_type):
    return FD(_check(libbpf().bpf_link_create(int(prog_fd), int(target_fd), attach_type, None),
                     'attaching program (BPF link create)'))


def link_update(link_fd, prog_fd):
    _check(libbpf().bpf_link_update(int(link_fd), int(prog_fd), None), 'replacing program (BPF link update)')


def _buf(data, size):
    if data is None:
        return ctypes.create_string_buffer(size)
    return ctypes.create_string_buffer(bytes(data), size)


def map_update(fd, key, value, flags=BPF_ANY):
    k, v = _buf(key, len(key)), _buf(value, len(value))
    _check(libbpf().bpf_map_update_elem(int(fd), k, v, flags), 'updating map element')


def map_lookup(fd, key, value_size):
    """Return the value bytes, or None when the key is absent."""
    k, v = _buf(key, len(key)), ctypes.create_string_buffer(value_size)
    ret = libbpf().bpf_map_lookup_elem(int(fd), k, v)
    if ret < 0 and -ret == errno.ENOENT:
        return None
    _check(ret, 'looking up map element')
    return v.raw


def map_delete(fd, key):
    """Delete a key; return False when it was not there."""
    ret = libbpf().bpf_map_delete_elem(int(fd), _buf(key, len(key)))
    if ret < 0 and -ret == errno.ENOENT:
        return False
    _check(ret, 'deleting map element')
    return True


def map_keys(fd, key_size):
    """Every key of a map, by get_next_key (works for every map type)."""
    lib = libbpf()
    keys = []
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        ret = lib.bpf_map_get_next_key(int(fd), cur, nxt)
        if ret < 0:
            if -ret == errno.ENOENT:
                return keys
            _check(ret, 'iterating map keys')
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def _batch_opts(elem_flags=0):
    return _BatchOpts(sz=ctypes.sizeof(_BatchOpts), elem_flags=elem_flags)


def map_update_batch(fd, keys, values, key_size, value_size, elem_flags=BPF_ANY):
    """Write many elements in one syscall per chunk; fall back to single updates
    on kernels whose map type lacks batch support."""
    chunk = 65536
    lib = libbpf()
    for start in range(0, len(keys), chunk):
        ks, vs = keys[start:start + chunk], values[start:start + chunk]
        kbuf = ctypes.create_string_buffer(b''.join(ks), key_size * len(ks))
        vbuf = ctypes.create_string_buffer(b''.join(vs), value_size * len(vs))
        count = ctypes.c_uint32(len(ks))
        ret = lib.bpf_map_update_batch(int(fd), kbuf, vbuf, ctypes.byref(count), ctypes.byref(_batch_opts(elem_flags)))
        if ret < 0 and -ret in (errno.EINVAL, errno.ENOTSUPP if hasattr(errno, 'ENOTSUPP') else 524, 524):
            for k, v in zip(ks[count.value:], vs[count.value:]):
                map_update(fd, k, v, elem_flags)
            continue
        _check(ret, 'updating map elements (batch)', '%d of %d written' % (count.value, len(ks)))


def map_delete_batch(fd, keys, key_size):
    chunk = 65536
    lib = libbpf()
    for start in range(0, len(keys), chunk):
        ks = keys[start:start + chunk]
        kbuf = ctypes.create_string_buffer(b''.join(ks), key_size * len(ks))
        count = ctypes.c_uint32(len(ks))
        ret = lib.bpf_map_delete_batch(int(fd), kbuf, ctypes.byref(count), ctypes.byref(_batch_opts()))
        if ret < 0 and -ret in (errno.EINVAL, 524):
            for k in ks[count.value:]:
                map_delete(fd, k)
            continue
        _check(ret, 'deleting map elements (batch)', '%d of %d deleted' % (count.value, len(ks)))


def map_items(fd, key_size, value_size, max_entries):
    """Every (key, value) pair, by batch lookup where the map supports it."""
    lib = libbpf()
    chunk = max(1, min(max_entries, 65536))
    kbuf = ctypes.create_string_buffer(key_size * chunk)
    vbuf = ctypes.create_string_buffer(value_size * chunk)
    token = ctypes.create_string_buffer(max(key_size, 8))
    items = []
    first = True
    while True:
        count = ctypes.c_uint32(chunk)
        ret = lib.bpf_map_lookup_batch(int(fd), None if first else token, token, kbuf, vbuf,
                                       ctypes.byref(count), ctypes.byref(_batch_opts()))
        if ret < 0 and first and -ret in (errno.EINVAL, 524):
            return _items_by_keys(fd, key_size, value_size)
        n = count.value
        raw_k, raw_v = kbuf.raw, vbuf.raw
        for i in range(n):
            items.append((raw_k[i * key_size:(i + 1) * key_size], raw_v[i * value_size:(i + 1) * value_size]))
        if ret < 0:
            if -ret == errno.ENOENT:
                return items
            _check(ret, 'reading map elements (batch)')
        first = False


def _items_by_keys(fd, key_size, value_size):
    items = []
    for k in map_keys(fd, key_size):
        v = map_lookup(fd, k, value_size)
        if v is not None:
            items.append((k, v))
    return items


class SkLookupCtx(ctypes.Structure):
    """``struct bpf_sk_lookup`` as PROG_TEST_RUN takes and returns it."""
    _fields_ = [
        ('cookie', ctypes.c_uint64),
        ('family', ctypes.c_uint32),
        ('protocol', ctypes.c_uint32),
        ('remote_ip4', ctypes.c_uint32),
        ('remote_ip6', ctypes.c_uint32 * 4),
        ('remote_port', ctypes.c_uint16),
        ('_pad', ctypes.c_uint16),
        ('local_ip4', ctypes.c_uint32),
        ('local_ip6', ctypes.c_uint32 * 4),
        ('local_port', ctypes.c_uint32),
        ('ingress_ifindex', ctypes.c_uint32),
    ]


def prog_test_run(prog_fd, ctx, repeat=1):
    """Run a sk_lookup program on a synthetic lookup.

    Returns (verdict, selected socket cookie or 0, mean duration in ns).
    """
    out = SkLookupCtx()
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), ctx_in=ctypes.addressof(ctx),
                        ctx_size_in=ctypes.sizeof(ctx), ctx_out=ctypes.addressof(out),
                        ctx_size_out=ctypes.sizeof(out), repeat=repeat)
    _check(libbpf().bpf_prog_test_run_opts(int(prog_fd), ctypes.byref(opts)), 'test-running program')
    return opts.retval, out.cookie, opts.duration
