# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dispatcher of one instance: its pinned maps, its program and its link.

Every module and the info module go through :class:`Dispatcher`; nothing is
stored anywhere but the kernel. Pins live under ``<bpffs>/sk_lookup/<instance>/``:

==============  ==========================================================
link            BPF link attaching the program to a network namespace
bindings        array of two hash tables (protocol, family, port, prefix
                length, masked prefix) -> destination id; the tables are
                inner maps, reached through this array, not pinned
tries           array of two LPM tries, the same bindings for a (protocol,
                family) whose set uses too many prefix lengths to try each
prefix_lengths  per table, protocol and family: the prefix lengths in use,
                and whether the hash table or the trie holds them
active_table    which of the two tables the program reads (flipped atomically)
sockets         SOCKMAP destination id -> socket
metrics         per-CPU counters per destination id
destinations    (label, family, protocol) -> destination id
meta            source sha256, format, missing_socket policy, max_bindings
protected       the compiled-in protected rules, for reporting and checks
==============  ==========================================================
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import struct
import time

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bpf_syscalls as bpf
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd

PIN_SUBDIR = 'sk_lookup'
LINK_PIN = 'link'
BPF_FS_MAGIC = 0xcafe4a11
LOCK_DIR = '/run/lock/bpfsteer-sk_lookup'
# Layout of the pinned maps; bumped whenever an instance made by an older
# layout cannot be read or upgraded in place.
FORMAT = 2
# How long a program that read the old active_table may still be using it.
FLIP_GRACE_SECONDS = 0.05

# Maps the dispatch program itself references: name -> (type, key size, value size).
PROGRAM_MAPS = {
    'bindings': (bpf.BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4),
    'tries': (bpf.BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4),
    'prefix_lengths': (bpf.BPF_MAP_TYPE_ARRAY, 4, bnd.LENGTH_SET_SIZE),
    'active_table': (bpf.BPF_MAP_TYPE_ARRAY, 4, 4),
    'sockets': (bpf.BPF_MAP_TYPE_SOCKMAP, 4, 8),
    'metrics': (bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 24),
}

# struct dest_key { char label[64]; u8 family; u8 protocol; u16 pad; }
_DEST_KEY = struct.Struct('=64sBBH')
# struct meta { u8 sha256[32]; u32 format; u32 missing_socket; u32 max_bindings; }
_META = struct.Struct('=32sIII')
MISSING_SOCKET = {'drop': 0, 'pass': 1, 'unknown': 0xff}
MISSING_SOCKET_NAMES = dict((v, k) for k, v in MISSING_SOCKET.items())
PROTECTED_MAX = 256
# Smallest size of a bindings table; a table is sized to a power of two with
# room for a quarter more than it holds, and rebuilt when it leaves that band.
TABLE_MIN = 64


class DispatcherError(Exception):
    """A failure with a message meant for the operator."""


class FormatMismatch(DispatcherError):
    """The instance was pinned by a version with another map layout."""


def userspace_maps(max_destinations):
    """Maps only userspace reads: name -> (type, key, value, max_entries, flags)."""
    return {
        'destinations': (bpf.BPF_MAP_TYPE_HASH, _DEST_KEY.size, 4, max_destinations, bpf.BPF_F_NO_PREALLOC),
        'meta': (bpf.BPF_MAP_TYPE_ARRAY, 4, _META.size, 1, 0),
        'protected': (bpf.BPF_MAP_TYPE_HASH, bnd.KEY_SIZE, 4, PROTECTED_MAX, bpf.BPF_F_NO_PREALLOC),
    }


# --- paths, bpffs, namespaces, locking -------------------------------------

def check_instance_name(name):
    if not isinstance(name, str) or not re.match(r'^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$', name):
        raise DispatcherError('instance %r must be 1-64 characters of letters, digits, "_" '
                              'or "-" (bpffs reserves "."), starting with a letter or digit' % (name,))
    return name


def instance_dir(bpffs, instance):
    return os.path.join(bpffs, PIN_SUBDIR, check_instance_name(instance))


class _StatFs(ctypes.Structure):
    _fields_ = [('f_type', ctypes.c_long), ('_rest', ctypes.c_byte * 112)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def is_bpffs(path):
    buf = _StatFs()
    if _libc().statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xffffffff) == BPF_FS_MAGIC


def ensure_bpffs(path):
    """Mount a BPF filesystem at ``path`` unless one is there; return True if mounted now."""
    if is_bpffs(path):
        return False
    if os.path.exists(path) and not os.path.isdir(path):
        raise DispatcherError('bpffs path %s exists and is not a directory' % path)
    try:
        if not os.path.isdir(path):
            os.makedirs(path, 0o700)
    except OSError as exc:
        raise DispatcherError('cannot create bpffs mount point %s: %s' % (path, exc.strerror))
    libc = _libc()
    if libc.mount(b'bpf', path.encode(), b'bpf', 0, b'mode=0700') != 0:
        err = ctypes.get_errno()
        raise DispatcherError('%s is not a BPF filesystem and mounting one there failed: %s%s'
                              % (path, os.strerror(err),
                                 ' (needs root / CAP_SYS_ADMIN)' if err in (errno.EPERM, errno.EACCES) else ''))
    return True


def netns_inode(path):
    """Inode of a network namespace file; errors name the path."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DispatcherError('network namespace %s: %s' % (path, exc.strerror))
    fd = None
    try:
        fd = os.open(path, os.O_RDONLY)
        # CLONE_NEWNET: setns with this type fails unless it really is a netns file,
        # so ask the kernel through the NS_GET_NSTYPE ioctl.
        nstype = fcntl.ioctl(fd, 0xb703)  # NS_GET_NSTYPE
    except OSError as exc:
        raise DispatcherError('%s is not a network namespace file (%s)' % (path, exc.strerror))
    finally:
        if fd is not None:
            os.close(fd)
    if nstype != 0x40000000:  # CLONE_NEWNET
        raise DispatcherError('%s is a namespace file but not a network namespace' % path)
    return st.st_ino


class InstanceLock(object):
    """Serialise runs on one instance across processes (flock on /run/lock)."""

    def __init__(self, pin_dir):
        digest = hashlib.sha1(os.path.abspath(pin_dir).encode()).hexdigest()[:16]
        self.path = os.path.join(LOCK_DIR, '%s.lock' % digest)
        self.fd = None

    def __enter__(self):
        if not os.path.isdir(LOCK_DIR):
            os.makedirs(LOCK_DIR, 0o755)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def possible_cpus():
    with open('/sys/devices/system/cpu/possible') as f:
        count = 0
        for part in f.read().strip().split(','):
            lo, _sep, hi = part.partition('-')
            count += int(hi or lo) - int(lo) + 1
        return count


def source_sha256(source):
    return hashlib.sha256(source.encode()).hexdigest()


_MANIFEST = re.compile(r'^\s*\*?\s*bpfsteer:(\w+)=(.*?)\s*$', re.M)


def parse_manifest(source):
    """The ``bpfsteer:key=value`` lines the template writes into its header."""
    manifest = {'protected': []}
    for key, value in _MANIFEST.findall(source):
        if key == 'protected':
            parts = value.split()
            if len(parts) != 3:
                raise DispatcherError('bad bpfsteer:protected line %r in the source' % value)
            manifest['protected'].append({'protocol': parts[0], 'prefix': parts[1], 'port': parts[2]})
        else:
            manifest[key] = value
    return manifest


# --- the dispatcher ---------------------------------------------------------

class Dispatcher(object):
    """An opened, loaded instance. Use :func:`open_dispatcher`."""

    def __init__(self, pin_dir, fds):
        self.pin_dir = pin_dir
        self.fds = fds              # name -> FD
        self.specs = dict((name, bpf.map_info(fd)) for name, fd in fds.items() if name != LINK_PIN)
        self._ncpus = None

    def close(self):
        for fd in self.fds.values():
            fd.close()
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- program, link, meta
    def program(self):
        link = bpf.link_info(self.fds[LINK_PIN])
        result = {'link_id': link.id, 'id': link.prog_id, 'netns_inode': link.netns_ino or None,
                  'attached': bool(link.netns_ino), 'tag': None, 'name': None}
        try:
            with bpf.prog_get_fd_by_id(link.prog_id) as pfd:
                info = bpf.prog_info(pfd)
                result['tag'] = bytes(info.tag).hex()
                result['name'] = info.name.decode()
        except bpf.BPFError:
            pass
        result.update(self.meta())
        return result

    def meta(self):
        return read_meta(self.fds['meta'])

    def protected(self):
        rules = []
        for key in bpf.map_keys(self.fds['protected'], bnd.KEY_SIZE):
            protocol, network, port = bnd.decode_key(key)
            rules.append((protocol, network, port))
        return sorted(rules, key=lambda r: (r[0], r[1].version, str(r[1]), r[2]))

    # -- capacity
    @property
    def max_bindings(self):
        return self.meta()['max_bindings']

    @property
    def max_destinations(self):
        return self.specs['sockets'].max_entries

    # -- destinations
    def destinations_raw(self):
        """{(label, family, protocol): dest_id}"""
        out = {}
        for key, value in bpf.map_items(self.fds['destinations'], _DEST_KEY.size, 4, self.max_destinations):
            label, family, proto, _pad = _DEST_KEY.unpack(key)
            out[(label.rstrip(b'\0').decode(), family, proto)] = struct.unpack('=I', value)[0]
        return out

    def socket_cookies(self):
        """{dest_id: cookie} of the registered sockets."""
        out = {}
        for key, value in bpf.map_items(self.fds['sockets'], 4, 8, self.max_destinations):
            out[struct.unpack('=I', key)[0]] = struct.unpack('=Q', value)[0]
        return out

    def metrics(self, dest_id):
        if self._ncpus is None:
            self._ncpus = possible_cpus()
        raw = bpf.map_lookup(self.fds['metrics'], struct.pack('=I', dest_id), 24 * self._ncpus)
        totals = [0, 0, 0]
        for cpu in range(self._ncpus):
            for i, v in enumerate(struct.unpack_from('=QQQ', raw, cpu * 24)):
                totals[i] += v
        return dict(zip(('lookups', 'misses', 'errors'), totals))

    def destinations(self):
        cookies = self.socket_cookies()
        out = []
        for (label, family, proto), dest_id in sorted(self.destinations_raw().items()):
            entry = {'label': label, 'family': bnd.FAMILY_NAMES.get(family, str(family)),
                     'protocol': bnd.PROTOCOL_NAMES.get(proto, str(proto)), 'id': dest_id,
                     'socket_cookie': cookies.get(dest_id)}
            entry.update(self.metrics(dest_id))
            out.append(entry)
        return out

    def ensure_destination(self, label, family, protocol, existing=None):
        """The id of (label, family, protocol), allocating one (with zeroed metrics) if new."""
        existing = self.destinations_raw() if existing is None else existing
        proto = bnd.PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
        key = (label, family, proto)
        if key in existing:
            return existing[key]
        used = set(existing.values())
        free = next((i for i in range(self.max_destinations) if i not in used), None)
        if free is None:
            raise DispatcherError('no room for destination %s %s %s: all %d destinations are in use '
                                  '(raise max_destinations)' % (label, bnd.FAMILY_NAMES[family], protocol,
                                                                self.max_destinations))
        if self._ncpus is None:
            self._ncpus = possible_cpus()
        bpf.map_update(self.fds['metrics'], struct.pack('=I', free), b'\0' * 24 * self._ncpus)
        bpf.map_update(self.fds['destinations'], _DEST_KEY.pack(label.encode(), family, proto, 0),
                       struct.pack('=I', free), bpf.BPF_NOEXIST)
        existing[key] = free
        return free

    def drop_unused_destinations(self, used_ids):
        """Forget destinations no binding references and no socket serves."""
        cookies = self.socket_cookies()
        for (label, family, proto), dest_id in self.destinations_raw().items():
            if dest_id not in used_ids and dest_id not in cookies:
                bpf.map_delete(self.fds['destinations'], _DEST_KEY.pack(label.encode(), family, proto, 0))

    # -- sockets
    def set_socket(self, dest_id, sock_fd):
        """Point a destination at a socket in one map update; return its cookie."""
        bpf.map_update(self.fds['sockets'], struct.pack('=I', dest_id), struct.pack('=Q', sock_fd))
        return struct.unpack('=Q', bpf.map_lookup(self.fds['sockets'], struct.pack('=I', dest_id), 8))[0]

    def clear_socket(self, dest_id):
        return bpf.map_delete(self.fds['sockets'], struct.pack('=I', dest_id))

    # -- bindings
    def active_index(self):
        raw = bpf.map_lookup(self.fds['active_table'], struct.pack('=I', 0), 4)
        return 1 if struct.unpack('=I', raw)[0] else 0

    def _slot(self, outer, index):
        """An FD of the inner map in slot ``index`` of ``outer``, or None."""
        raw = bpf.map_lookup(self.fds[outer], struct.pack('=I', index), 4)
        return None if raw is None else bpf.map_get_fd_by_id(struct.unpack('=I', raw)[0])

    def _table(self, index, create=True):
        """An FD of hash table ``index``. An empty slot (only before the first load
        finished) gets an empty table, or None with create=False."""
        fd = self._slot('bindings', index)
        if fd is None and create:
            return self._install_table(index, [], [])
        return fd

    def _trie(self, index, create=True):
        fd = self._slot('tries', index)
        if fd is None and create:
            # an LPM trie allocates per entry, so it is made at full size once
            fd = bpf.map_create(bpf.BPF_MAP_TYPE_LPM_TRIE, 'trie_table', bnd.TRIE_KEY_SIZE, bnd.TRIE_VALUE_SIZE,
                                self.max_bindings, bpf.BPF_F_NO_PREALLOC)
            try:
                bpf.map_update(self.fds['tries'], struct.pack('=I', index), struct.pack('=I', int(fd)))
            except Exception:
                fd.close()
                raise
        return fd

    def _install_table(self, index, keys, values):
        """Put a new hash table holding exactly keys/values into slot ``index``; return its FD.

        Only ever done to the idle table, or to a slot no lookup has reached yet.
        """
        capacity = capacity_for(len(keys), self.max_bindings)
        while True:
            fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 'binding_table', bnd.KEY_SIZE, bnd.VALUE_SIZE,
                                capacity, bpf.BPF_F_NO_PREALLOC)
            try:
                if keys:
                    bpf.map_update_batch(fd, keys, values, bnd.KEY_SIZE, bnd.VALUE_SIZE)
                bpf.map_update(self.fds['bindings'], struct.pack('=I', index), struct.pack('=I', int(fd)))
                return fd
            except bpf.BPFError as exc:
                fd.close()
                if exc.errno != errno.EINVAL or capacity == self.max_bindings:
                    raise
            # Before Linux 5.10 an inner map must have exactly the template's
            # size, max_bindings: such kernels get full-size tables.
            capacity = self.max_bindings

    def _table_raw(self, index):
        return _read_and_close(self._table(index, create=False), bnd.KEY_SIZE, bnd.VALUE_SIZE)

    def _trie_raw(self, index):
        return _read_and_close(self._trie(index, create=False), bnd.TRIE_KEY_SIZE, bnd.TRIE_VALUE_SIZE)

    def prefix_lengths(self, index=None):
        """{(protocol, version): (uses the trie, [(prefixlen, kinds), ...])} of a table."""
        index = self.active_index() if index is None else index
        out = {}
        for protocol in bnd.PROTOCOLS:
            for version in (4, 6):
                raw = bpf.map_lookup(self.fds['prefix_lengths'],
                                     struct.pack('=I', bnd.length_set_index(index, protocol, version)),
                                     bnd.LENGTH_SET_SIZE)
                trie, entries = bnd.decode_length_set(raw)
                if entries:
                    out[(protocol, version)] = (trie, entries)
        return out

    def table_capacity(self):
        """How many entries the table the program reads now has room for."""
        fd = self._table(self.active_index(), create=False)
        if fd is None:
            return 0
        with fd:
            return bpf.map_info(fd).max_entries

    def bindings(self, index=None):
        """The bindings the program reads now: {match: Binding}."""
        index = self.active_index() if index is None else index
        labels = dict((v, k[0]) for k, v in self.destinations_raw().items())
        out = {}
        found = [(bnd.decode_key(k), bnd.decode_value(v)) for k, v in self._table_raw(index).items()]
        found += [(bnd.decode_trie_key(k), bnd.decode_trie_value(v)) for k, v in self._trie_raw(index).items()]
        for (protocol, network, port), dest_id in found:
            label = labels.get(dest_id, '<unknown destination %d>' % dest_id)
            out[(protocol, network, port)] = bnd.Binding(protocol, network, port, label)
        return out

    def replace_bindings(self, desired):
        """Make the bindings exactly ``desired`` ({match: Binding}).

        The idle table is brought to the new set, the program is switched to
        it with one update of active_table, and then the old table is brought
        to the same set, so lookups see the old set or the new, never a mix.
        """
        if len(desired) > self.max_bindings:
            raise DispatcherError('%d bindings do not fit: the instance holds at most %d '
                                  '(raise max_bindings)' % (len(desired), self.max_bindings))
        existing = self.destinations_raw()
        lengths = bnd.length_sets(desired)
        in_trie = set(combo for combo, entries in lengths.items() if bnd.uses_trie(entries))
        want, want_trie = {}, {}
        used = set()
        for binding in desired.values():
            dest_id = self.ensure_destination(binding.label, binding.family, binding.protocol, existing)
            used.add(dest_id)
            if (binding.protocol, binding.network.version) in in_trie:
                want_trie[bnd.encode_trie_key(*binding.match)] = bnd.encode_trie_value(dest_id, binding.network)
            else:
                want[binding.to_key()] = bnd.encode_value(dest_id)
        active = self.active_index()
        idle = 1 - active
        self._sync_table(idle, want, want_trie, lengths)
        bpf.map_update(self.fds['active_table'], struct.pack('=I', 0), struct.pack('=I', idle))
        time.sleep(FLIP_GRACE_SECONDS)
        self._sync_table(active, want, want_trie, lengths)
        self.drop_unused_destinations(used)

    def _sync_table(self, index, want, want_trie, lengths):
        """Bring idle table ``index``, its trie and its prefix lengths to the wanted entries."""
        with self._table(index) as fd:
            capacity = bpf.map_info(fd).max_entries
            if table_fits(len(want), capacity, self.max_bindings):
                _sync_entries(fd, _items(fd, bnd.KEY_SIZE, bnd.VALUE_SIZE), want, bnd.KEY_SIZE, bnd.VALUE_SIZE)
            else:
                # Resized: a fresh table, filled before it goes into the slot.
                self._install_table(index, list(want), list(want.values())).close()
        with self._trie(index) as fd:
            _sync_entries(fd, _items(fd, bnd.TRIE_KEY_SIZE, bnd.TRIE_VALUE_SIZE), want_trie,
                          bnd.TRIE_KEY_SIZE, bnd.TRIE_VALUE_SIZE)
        for protocol in bnd.PROTOCOLS:
            for version in (4, 6):
                slot = bnd.length_set_index(index, protocol, version)
                bpf.map_update(self.fds['prefix_lengths'], struct.pack('=I', slot),
                               bnd.encode_length_set(lengths.get((protocol, version), [])))

    def used_destination_ids(self):
        ids = set()
        for index in (0, 1):
            ids.update(bnd.decode_value(v) for v in self._table_raw(index).values())
            ids.update(bnd.decode_trie_value(v) for v in self._trie_raw(index).values())
        return ids


def _items(fd, key_size, value_size):
    return dict(bpf.map_items(fd, key_size, value_size, bpf.map_info(fd).max_entries))


def _read_and_close(fd, key_size, value_size):
    if fd is None:
        return {}
    with fd:
        return _items(fd, key_size, value_size)


def _sync_entries(fd, have, want, key_size, value_size):
    stale = [k for k in have if k not in want]
    write = [(k, v) for k, v in want.items() if have.get(k) != v]
    # Delete first: writing first would need room for the old and the new set at
    # once (E2BIG near a table's capacity).
    if stale:
        bpf.map_delete_batch(fd, stale, key_size)
    if write:
        bpf.map_update_batch(fd, [k for k, _v in write], [v for _k, v in write], key_size, value_size)


def capacity_for(count, max_bindings):
    """Entries to size a table holding ``count`` bindings for."""
    capacity = TABLE_MIN
    while capacity < count + count // 4:
        capacity *= 2
    return min(capacity, max_bindings)


def table_fits(count, capacity, max_bindings):
    """Whether a table of ``capacity`` should keep holding ``count`` bindings.

    It must have room. It is shrunk once it is more than four times the size
    it would be built at, so memory follows the set without a rebuild on
    every change; a table at max_bindings is kept (kernels before 5.10 only
    accept inner maps of that size).
    """
    if count > capacity:
        return False
    return capacity == max_bindings or capacity <= 4 * capacity_for(count, max_bindings)


def read_meta(fd):
    raw = bpf.map_lookup(fd, struct.pack('=I', 0), _META.size)
    sha, fmt, missing, max_bindings = _META.unpack(raw)
    return {'source_sha256': sha.hex() if any(sha) else None, 'format': fmt,
            'missing_socket': MISSING_SOCKET_NAMES.get(missing, 'unknown'), 'max_bindings': max_bindings}


def open_pins(pin_dir):
    """Open every pin in an instance directory: name -> FD (missing ones absent)."""
    fds = {}
    try:
        names = os.listdir(pin_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return fds
        raise DispatcherError('cannot read pin directory %s: %s' % (pin_dir, exc.strerror))
    try:
        for name in names:
            fds[name] = bpf.obj_get(os.path.join(pin_dir, name))
    except bpf.BPFError as exc:
        for fd in fds.values():
            fd.close()
        raise DispatcherError(str(exc))
    return fds


def open_dispatcher(pin_dir):
    """The loaded instance at pin_dir, or None when nothing is loaded there."""
    fds = open_pins(pin_dir)
    if LINK_PIN not in fds:
        for fd in fds.values():
            fd.close()
        return None
    fmt = None
    if 'meta' in fds:
        try:
            fmt = struct.unpack_from('=I', bpf.map_lookup(fds['meta'], struct.pack('=I', 0),
                                                          bpf.map_info(fds['meta']).value_size), 32)[0]
        except (bpf.BPFError, struct.error, TypeError):
            fmt = None
    if fmt is not None and fmt != FORMAT:
        for fd in fds.values():
            fd.close()
        raise FormatMismatch('instance at %s was made by another version of bpfsteer.sk_lookup (pin '
                             'format %d; this version reads format %d); remove it with state=absent and '
                             'load it again' % (pin_dir, fmt, FORMAT))
    missing = [n for n in list(PROGRAM_MAPS) + ['destinations', 'meta', 'protected'] if n not in fds]
    if missing:
        for fd in fds.values():
            fd.close()
        raise DispatcherError('instance at %s is damaged: pins %s are missing; remove it with '
                              'state=absent and load it again' % (pin_dir, ', '.join(missing)))
    return Dispatcher(pin_dir, fds)


def snapshot(pin_dir):
    """The whole state of an instance as plain data (what sk_lookup_info returns)."""
    disp = open_dispatcher(pin_dir)
    if disp is None:
        return {'loaded': False, 'program': None, 'bindings': [], 'destinations': [],
                'protected': [], 'pin_dir': pin_dir}
    with disp:
        bindings = sorted(disp.bindings().values(), key=bnd.sort_key)
        program = disp.program()
        program.update({'max_bindings': disp.max_bindings, 'max_destinations': disp.max_destinations,
                        'active_table': disp.active_index(), 'table_capacity': disp.table_capacity(),
                        'prefix_lengths': [
                            {'protocol': protocol, 'family': 'ipv%d' % version,
                             'lengths': [plen for plen, _k in entries], 'lookup': 'trie' if trie else 'hash',
                             'hash_probes': None if trie else bnd.hash_probes(entries)}
                            for (protocol, version), (trie, entries) in sorted(disp.prefix_lengths().items())]})
        return {
            'loaded': True,
            'pin_dir': pin_dir,
            'program': program,
            'bindings': [b.as_dict() for b in bindings],
            'destinations': disp.destinations(),
            'protected': [{'protocol': p, 'prefix': str(n), 'port': port} for p, n, port in disp.protected()],
        }


# --- program lifecycle -------------------------------------------------------

def _contract_problems(compiled):
    problems = []
    for name, (mtype, ksize, vsize) in sorted(PROGRAM_MAPS.items()):
        if name not in compiled.maps:
            problems.append('map %s is not defined' % name)
            continue
        spec = compiled.maps[name][1]
        if (spec.map_type, spec.key_size, spec.value_size) != (mtype, ksize, vsize):
            problems.append('map %s is a %s with key %d / value %d bytes; the dispatcher needs a %s '
                            'with key %d / value %d bytes'
                            % (name, bpf.MAP_TYPE_NAMES.get(spec.map_type, spec.map_type), spec.key_size,
                               spec.value_size, bpf.MAP_TYPE_NAMES[mtype], ksize, vsize))
    return problems


class Plan(object):
    """What ``ensure_program`` found and will do: action is one of
    none, load, upgrade, reattach."""

    def __init__(self, action, before, reason=None):
        self.action = action
        self.before = before
        self.reason = reason


def program_state(pin_dir, netns_ino):
    """(state dict for diffs, Dispatcher or None)."""
    disp = open_dispatcher(pin_dir)
    if disp is None:
        return {'loaded': False, 'attached': False, 'source_sha256': None, 'program_id': None,
                'program_tag': None, 'netns_inode': None}, None
    prog = disp.program()
    return {'loaded': True, 'attached': prog['attached'], 'source_sha256': prog['source_sha256'],
            'program_id': prog['id'], 'program_tag': prog['tag'], 'netns_inode': prog['netns_inode']}, disp


def plan_program(pin_dir, netns_ino, sha):
    before, disp = program_state(pin_dir, netns_ino)
    if disp is None:
        return Plan('load', before), None
    if before['attached'] and before['netns_inode'] != netns_ino:
        disp.close()
        raise DispatcherError('instance at %s is attached to network namespace inode %s, not to the '
                              'requested one (inode %s); remove it first (state=absent) or use another '
                              'instance name' % (pin_dir, before['netns_inode'], netns_ino))
    if not before['attached']:
        return Plan('reattach', before, 'its network namespace is gone'), disp
    if before['source_sha256'] != sha:
        return Plan('upgrade', before), disp
    return Plan('none', before), disp


def _write_meta(fds, sha, manifest):
    missing = MISSING_SOCKET.get(manifest.get('missing_socket', 'unknown'), MISSING_SOCKET['unknown'])
    bpf.map_update(fds['meta'], struct.pack('=I', 0),
                   _META.pack(bytes.fromhex(sha), FORMAT, missing, manifest['max_bindings']))
    rules = bnd.parse_protected(manifest['protected'])
    want = set(bnd.encode_key(p, n, port) for p, n, port in rules)
    for key in bpf.map_keys(fds['protected'], bnd.KEY_SIZE):
        if key not in want:
            bpf.map_delete(fds['protected'], key)
    for key in want:
        bpf.map_update(fds['protected'], key, struct.pack('=I', 0))


def install(pin_dir, netns_path, source, plan, disp, check_mode=False):
    """Carry out a plan from plan_program. Returns the after-state for the diff.

    Nothing is pinned, attached or replaced until every step that can fail
    (compile, map compatibility, verifier) has succeeded; a new instance is
    built in a staging directory and renamed into place.
    """
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import compiler

    sha = source_sha256(source)
    try:
        manifest = parse_manifest(source)
        bnd.parse_protected(manifest['protected'])
    except bnd.BindingError as exc:
        raise DispatcherError('the source declares an invalid protected rule: %s' % exc)
    if manifest.get('format', str(FORMAT)) != str(FORMAT):
        raise DispatcherError('the source declares bpfsteer:format=%s; this version of the collection '
                              'loads format %d: render it from this version\'s bpf/dispatch.c.j2'
                              % (manifest['format'], FORMAT))
    try:
        compiled = compiler.compile_source(source)
    except compiler.CompileError as exc:
        raise DispatcherError(str(exc))
    new_pins = {}      # maps this call adds to the instance
    created = []       # fds this call created and must close
    prog_fd = link_fd = netns_fd = None
    staging = None
    committed = False
    try:
        problems = _contract_problems(compiled)
        if problems:
            raise DispatcherError('the source is not a bpfsteer dispatch program: %s' % '; '.join(problems))
        try:
            manifest['max_bindings'] = int(manifest.get('max_bindings', ''))
            if not 1 <= manifest['max_bindings'] <= 0xffffffff:
                raise ValueError
        except ValueError:
            raise DispatcherError('the source declares bpfsteer:max_bindings=%r, which must be a positive '
                                  'integer (render the source from bpf/dispatch.c.j2)'
                                  % manifest.get('max_bindings', '(nothing)'))
        existing = disp.fds if disp is not None else {}
        fds = {}
        diffs = []
        for name, (fd, spec) in compiled.maps.items():
            if name in existing:
                pinned = compiler.MapSpec.of_fd(existing[name])
                diffs.extend(spec.differences(pinned))
                fds[name] = existing[name]
            else:
                fds[name] = fd
                new_pins[name] = fd
        max_dest = compiled.maps['sockets'][1].max_entries
        for name, (mtype, ksize, vsize, max_entries, flags) in userspace_maps(max_dest).items():
            wanted = compiler.MapSpec(name, mtype, ksize, vsize, max_entries, flags)
            if name in existing:
                diffs.extend(wanted.differences(compiler.MapSpec.of_fd(existing[name])))
                fds[name] = existing[name]
            else:
                fd = bpf.map_create(mtype, name, ksize, vsize, max_entries, flags)
                created.append(fd)
                fds[name] = new_pins[name] = fd
        if disp is not None and disp.max_bindings != manifest['max_bindings']:
            diffs.append('max_bindings %d in the new source, %d in the loaded instance'
                         % (manifest['max_bindings'], disp.max_bindings))
        if diffs:
            raise DispatcherError('the new source is incompatible with the maps of the loaded instance, '
                                  'which an in-place upgrade keeps: %s. Nothing was changed; to change map '
                                  'sizes remove the instance (state=absent) and load it again.'
                                  % '; '.join(diffs))
        try:
            prog_fd = bpf.prog_load(bpf.BPF_PROG_TYPE_SK_LOOKUP, compiler.ENTRY_FUNCTION,
                                    compiled.relocated(fds), bpf.BPF_SK_LOOKUP)
        except bpf.BPFError as exc:
            if exc.errno == errno.EINVAL and not exc.detail:
                raise DispatcherError('the kernel refused a BPF_PROG_TYPE_SK_LOOKUP program: it needs '
                                      'Linux 5.9 or later with CONFIG_BPF_SYSCALL (%s)' % exc)
            raise DispatcherError('the kernel verifier refused the dispatch program: %s' % exc)
        tag = bytes(bpf.prog_info(prog_fd).tag).hex()
        if check_mode:
            return {'loaded': True, 'attached': True, 'source_sha256': sha, 'program_id': None,
                    'program_tag': tag, 'netns_inode': netns_inode(netns_path)}

        if plan.action == 'upgrade':
            for name, fd in new_pins.items():
                bpf.obj_pin(fd, os.path.join(pin_dir, name))
            bpf.link_update(disp.fds[LINK_PIN], prog_fd)
        else:
            if plan.action == 'load':
                # Empty tables before the program can run: it reads them from its first lookup.
                bpf.map_update(fds['active_table'], struct.pack('=I', 0), struct.pack('=I', 0))
                _write_meta(fds, sha, manifest)
                fresh = Dispatcher(pin_dir, dict(fds))
                for index in (0, 1):
                    fresh._sync_table(index, {}, {}, {})
            netns_fd = os.open(netns_path, os.O_RDONLY)
            try:
                link_fd = bpf.link_create(prog_fd, netns_fd, bpf.BPF_SK_LOOKUP)
            except bpf.BPFError as exc:
                if exc.errno == errno.EINVAL:
                    raise DispatcherError('attaching to %s failed: the kernel has no BPF_SK_LOOKUP '
                                          'attach point (Linux 5.9+ needed): %s' % (netns_path, exc))
                raise DispatcherError('attaching to network namespace %s failed: %s' % (netns_path, exc))
            if plan.action == 'load':
                parent = os.path.dirname(pin_dir)
                if not os.path.isdir(parent):
                    os.makedirs(parent, 0o700)
                staging = '%s_staging_%d' % (pin_dir, os.getpid())
                os.mkdir(staging, 0o700)
                for name, fd in new_pins.items():
                    bpf.obj_pin(fd, os.path.join(staging, name))
                bpf.obj_pin(link_fd, os.path.join(staging, LINK_PIN))
                os.rename(staging, pin_dir)
                staging = None
            else:  # reattach: the old link lost its namespace; pin the new one over it
                for name, fd in new_pins.items():
                    bpf.obj_pin(fd, os.path.join(pin_dir, name))
                os.unlink(os.path.join(pin_dir, LINK_PIN))
                bpf.obj_pin(link_fd, os.path.join(pin_dir, LINK_PIN))
        _write_meta(fds, sha, manifest)
        committed = True
        info = bpf.prog_info(prog_fd)
        return {'loaded': True, 'attached': True, 'source_sha256': sha, 'program_id': info.id,
                'program_tag': tag, 'netns_inode': netns_inode(netns_path)}
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        elif not committed and disp is not None and not check_mode:
            for name in new_pins:
                try:
                    os.unlink(os.path.join(pin_dir, name))
                except OSError:
                    pass
        for fd in [prog_fd, link_fd] + created:
            if fd is not None:
                fd.close()
        if netns_fd is not None:
            os.close(netns_fd)
        compiled.close()


def remove(pin_dir):
    """Unpin the link first (detaching the program), then the maps and the directory."""
    link = os.path.join(pin_dir, LINK_PIN)
    if os.path.exists(link):
        os.unlink(link)
    if os.path.isdir(pin_dir):
        for name in os.listdir(pin_dir):
            os.unlink(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)
    parent = os.path.dirname(pin_dir)
    try:
        os.rmdir(parent)  # only when no other instance lives there
    except OSError:
        pass


def socket_family_name(family):
    return {socket.AF_INET: 'ipv4', socket.AF_INET6: 'ipv6'}.get(family, str(family))
