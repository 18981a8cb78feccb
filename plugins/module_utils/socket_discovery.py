# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find a running service's socket and register it as a destination's socket.

The service does not cooperate: it keeps its socket and never learns about
the dispatcher. We take a duplicate of the descriptor with ``pidfd_getfd``
(Linux 5.6+, governed by the same rules as ``ptrace`` attach), check that the
dispatcher can really use it, put it into the SOCKMAP and close the duplicate
again. The SOCKMAP holds the socket, not the file, so when the service exits
the kernel drops the entry by itself; keeping our duplicate open (or leaking
it into a child) would keep a dead service's socket registered.

Pure helpers (address matching, choosing among candidates, parsing pid files
and ``systemctl`` output) need no kernel access and are unit tested; the rest
is exercised by the integration tests.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import fcntl
import ipaddress
import os
import re
import socket
import struct
import threading
from collections import namedtuple

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils.dispatcher import DispatcherError

# Socket options by number: older Pythons lack some names, and SO_COOKIE has
# none in any version.
SOL_SOCKET = 1
SO_TYPE = 3
SO_REUSEPORT = 15
SO_ACCEPTCONN = 30
SO_PROTOCOL = 38
SO_DOMAIN = 39
SO_COOKIE = 57
# ioctl giving a new descriptor for the network namespace a socket lives in.
SIOCGSKNS = 0x894C
CLONE_NEWNET = 0x40000000

# (pidfd_open, pidfd_getfd). Since Linux 5.1 new system calls get one number
# on every architecture but alpha, so the table only needs to know which
# machines that covers.
_PIDFD_SYSCALLS = dict.fromkeys(
    ('x86_64', 'i386', 'i486', 'i586', 'i686', 'aarch64', 'arm64', 'armv6l', 'armv7l', 'armv8l',
     'riscv64', 'ppc64', 'ppc64le', 's390x', 'loongarch64'),
    (434, 438))

PROTOCOL_OF = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): 'tcp', (socket.SOCK_DGRAM, socket.IPPROTO_UDP): 'udp'}
FAMILY_BY_NAME = {'ipv4': socket.AF_INET, 'ipv6': socket.AF_INET6}
INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# How many sockets an error message lists before it says "and N more".
LIST_LIMIT = 12


class SocketError(DispatcherError):
    """A refusal or lookup failure; the message names the process and what it found."""


class SkippedDescriptor(SocketError):
    """A descriptor that is not, or no longer, a socket we can inspect.

    Scanning a process skips it (a descriptor may close or change between
    listing /proc/<pid>/fd and taking it); naming it with ``fd`` reports it.
    """


# --- system calls -------------------------------------------------------------

_libc_handle = []


def _libc():
    if not _libc_handle:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        _libc_handle.append(lib)
    return _libc_handle[0]


def pidfd_syscall_numbers(machine=None):
    """(pidfd_open, pidfd_getfd) for this machine; SocketError when unknown."""
    machine = machine or os.uname().machine
    numbers = _PIDFD_SYSCALLS.get(machine)
    if numbers is None:
        raise SocketError('taking a socket from another process needs pidfd_getfd, whose system call number '
                          'is not known here for machine %r' % machine)
    return numbers


def _syscall(number, *args):
    ret = _libc().syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def pidfd_open(pid):
    if hasattr(os, 'pidfd_open'):
        return os.pidfd_open(pid)
    return _syscall(pidfd_syscall_numbers()[0], pid, 0)


def pidfd_getfd(pidfd, target_fd):
    """A duplicate (close-on-exec) of descriptor ``target_fd`` of the pidfd's process.

    Python has ``os.pidfd_open`` (3.9+) but no ``pidfd_getfd``.
    """
    return _syscall(pidfd_syscall_numbers()[1], pidfd, target_fd, 0)


def socket_netns_inode(sock):
    """Inode of the network namespace a socket belongs to, or None when the
    kernel will not say (SIOCGSKNS needs CAP_NET_ADMIN over that namespace)."""
    try:
        ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return None
    try:
        return os.fstat(ns_fd).st_ino
    finally:
        os.close(ns_fd)


def socket_cookie(sock):
    return struct.unpack('=Q', sock.getsockopt(SOL_SOCKET, SO_COOKIE, 8))[0]


# --- what a socket is ----------------------------------------------------------

def format_endpoint(address, port):
    """``127.0.0.1:80``, ``[::1]:80``; ``*`` for an unknown address."""
    if address is None:
        return '*:%s' % port
    if address.version == 6:
        return '[%s]:%s' % (address, port)
    return '%s:%s' % (address, port)


def _ip(host):
    # getsockname() appends "%scope" to link-local IPv6 addresses.
    return ipaddress.ip_address(host.split('%', 1)[0])


class SocketInfo(namedtuple('SocketInfo', 'fd inode family sotype protocol address port peer listening '
                                          'reuseport cookie netns_inode')):
    """What one descriptor of a process is, as far as the dispatcher cares.

    ``fd`` is the number in the owning process; ``address`` is an ipaddress
    object (None for non-internet sockets); ``peer`` is the connected peer as
    text or None; ``netns_inode`` is None when it could not be read.
    """

    __slots__ = ()

    @property
    def inet(self):
        return self.family in INET_FAMILIES

    @property
    def proto_name(self):
        return PROTOCOL_OF.get((self.sotype, self.protocol)) if self.inet else None

    @property
    def family_name(self):
        return bnd.FAMILY_NAMES.get(self.family)

    @property
    def endpoint(self):
        return format_endpoint(self.address, self.port)

    def describe(self):
        """``tcp 127.0.0.1:80 listening``, ``udp [::]:53``, ``unix socket``."""
        if not self.inet:
            return '%s socket' % _family_label(self.family)
        kind = self.proto_name or 'type %d protocol %d' % (self.sotype, self.protocol)
        text = '%s %s' % (kind, self.endpoint)
        if self.listening:
            text += ' listening'
        if self.peer:
            text += ' connected to %s' % self.peer
        if self.reuseport:
            text += ' (SO_REUSEPORT)'
        return text

    def refusal(self):
        """Why the dispatcher cannot use this socket (text after "is"), or None.

        ``bpf_sk_assign`` only accepts TCP listeners; a connected UDP socket
        would get datagrams from any client although the kernel filters its
        input by peer otherwise; an unbound UDP socket is not hashed, and the
        kernel refuses unhashed sockets in a SOCKMAP.
        """
        if not self.inet:
            return 'not an internet socket but a %s socket' % _family_label(self.family)
        if self.proto_name is None:
            return 'neither a TCP nor a UDP socket (%s)' % self.describe()
        if self.proto_name == 'tcp' and not self.listening:
            return 'a TCP socket that is not listening (%s)' % self.describe()
        if self.proto_name == 'udp' and self.peer:
            return 'a connected UDP socket (udp %s connected to %s)' % (self.endpoint, self.peer)
        if self.proto_name == 'udp' and not self.port:
            return 'an unbound UDP socket (the kernel only accepts bound UDP sockets in a SOCKMAP)'
        return None

    def as_dict(self):
        return {'fd': self.fd, 'cookie': self.cookie, 'family': self.family_name, 'protocol': self.proto_name,
                'address': str(self.address) if self.address is not None else None, 'port': self.port,
                'reuseport': self.reuseport}


def _family_label(family):
    try:
        return socket.AddressFamily(family).name.replace('AF_', '').lower()
    except ValueError:
        return 'family %d' % family


def inspect_socket(sock, fd, inode=None):
    """SocketInfo of a socket object (our duplicate of descriptor ``fd``)."""
    family, sotype, protocol = int(sock.family), int(sock.type), int(sock.proto)
    if family not in INET_FAMILIES:
        return SocketInfo(fd, inode, family, sotype, protocol, None, None, None, False, False, None, None)
    name = sock.getsockname()
    try:
        peer_name = sock.getpeername()
        peer = format_endpoint(_ip(peer_name[0]), peer_name[1])
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        peer = None
    return SocketInfo(
        fd=fd, inode=inode, family=family, sotype=sotype, protocol=protocol,
        address=_ip(name[0]), port=name[1], peer=peer,
        listening=bool(sock.getsockopt(SOL_SOCKET, SO_ACCEPTCONN)),
        reuseport=bool(sock.getsockopt(SOL_SOCKET, SO_REUSEPORT)),
        cookie=socket_cookie(sock), netns_inode=socket_netns_inode(sock))


# --- what the user asked for ---------------------------------------------------

def parse_address(value, where='address'):
    """A single IPv4 or IPv6 address (brackets allowed, an IPv6 %scope ignored
    like the one getsockname() reports); SocketError otherwise."""
    text = str(value).strip()
    if text.startswith('[') and text.endswith(']'):
        text = text[1:-1]
    try:
        return _ip(text)
    except ValueError:
        raise SocketError('%s %r is not an IPv4 or IPv6 address (write the address the socket is bound to, '
                          'e.g. 127.0.0.1, 0.0.0.0 or ::)' % (where, value))


class Request(namedtuple('Request', 'fd protocol family address port')):
    """Which socket of the process: by ``fd``, or by ``protocol``/``address``/``port``.

    With ``fd`` the other fields are optional expectations the socket must meet.
    ``family`` is an AF_* number; ``address`` an ipaddress object.
    """

    __slots__ = ()

    @classmethod
    def from_params(cls, fd=None, protocol=None, family=None, address=None, port=None):
        if fd is not None and (isinstance(fd, bool) or fd < 0):
            raise SocketError('fd must be a descriptor number (0 or more), got %r' % (fd,))
        if protocol is not None:
            protocol = bnd.parse_protocol(protocol)
        if family is not None:
            if family not in FAMILY_BY_NAME:
                raise SocketError("family must be 'ipv4' or 'ipv6', got %r" % (family,))
            family = FAMILY_BY_NAME[family]
        if address is not None:
            address = parse_address(address)
            implied = socket.AF_INET if address.version == 4 else socket.AF_INET6
            if family is not None and family != implied:
                raise SocketError('address %s is an %s address but family is %s'
                                  % (address, bnd.FAMILY_NAMES[implied], bnd.FAMILY_NAMES[family]))
            family = implied
        if port is not None and (isinstance(port, bool) or not 1 <= port <= 65535):
            raise SocketError('port must be 1..65535 (the port the socket is bound to), got %r' % (port,))
        if fd is None and (protocol is None or port is None):
            raise SocketError('name the socket by fd, or by protocol and port (and optionally address); got '
                              'protocol=%r port=%r' % (protocol, port))
        return cls(fd, protocol, family, address, port)

    def describe(self):
        """``tcp 127.0.0.1:80``, ``udp *:53``, ``ipv6 tcp *:80``."""
        parts = []
        if self.family is not None and self.address is None:
            parts.append(bnd.FAMILY_NAMES[self.family])
        parts.append(self.protocol or 'tcp or udp')
        parts.append(format_endpoint(self.address, self.port if self.port is not None else '*'))
        return ' '.join(parts)

    def mismatch(self, info):
        """Why an internet socket does not fit this request (text after "is"), or None.

        The address matches exactly: a socket bound to 0.0.0.0 matches only
        address 0.0.0.0, not 127.0.0.1, because the user names the bound address.
        """
        if self.protocol is not None and info.proto_name != self.protocol:
            return 'a %s socket (%s), not %s as asked' % (
                (info.proto_name or 'non-TCP/UDP').upper(), info.describe(), self.protocol)
        if self.family is not None and info.family != self.family:
            return 'an %s socket (%s), not %s as asked' % (
                info.family_name, info.describe(), bnd.FAMILY_NAMES[self.family])
        if self.address is not None and info.address != self.address:
            return 'bound to %s, not to %s as asked' % (info.endpoint, self.address)
        if self.port is not None and info.port != self.port:
            return 'bound to %s, not to port %d as asked' % (info.endpoint, self.port)
        return None

    def matches(self, info):
        return info.inet and self.mismatch(info) is None


# --- choosing the socket ---------------------------------------------------------

def _listing(infos):
    shown = ['socket %d: %s' % (i.fd, i.describe()) for i in infos[:LIST_LIMIT]]
    if len(infos) > LIST_LIMIT:
        shown.append('and %d more' % (len(infos) - LIST_LIMIT))
    return '; '.join(shown) if shown else 'none'


def namespace_refusal(info, netns_inode):
    if netns_inode is None:
        return None
    if info.netns_inode is None:
        return 'in a network namespace this process may not inspect (SIOCGSKNS refused)'
    if info.netns_inode != netns_inode:
        return ('in network namespace inode %d, but the dispatcher is attached to network namespace inode %d'
                % (info.netns_inode, netns_inode))
    return None


def check_named_socket(info, request, netns_inode, who):
    """Refuse the socket behind ``fd=`` unless the dispatcher can use it as asked.

    ``who`` names the process, e.g. ``pid 1234 (nginx)``.
    """
    where = 'socket %d of %s' % (info.fd, who)
    reason = None
    if not info.inet or info.proto_name is None:
        reason = info.refusal()
    if reason is None:
        reason = request.mismatch(info) or info.refusal() or namespace_refusal(info, netns_inode)
    if reason:
        raise SocketError('%s is %s' % (where, reason))
    return info


def choose_socket(infos, request, netns_inode, who):
    """The one socket among a process's sockets that ``request`` names.

    Several sockets may match: dup()ed descriptors of one socket, or members
    of one SO_REUSEPORT group. The kernel balances a group among its members
    whichever member sk_lookup picks, so the lowest fd stands for the group.
    Sockets that do not form one group are ambiguous and refused.
    """
    infos = sorted(infos, key=lambda i: i.fd)
    inet = [i for i in infos if i.inet]
    matching = [i for i in inet if request.matches(i)]
    if not matching:
        raise SocketError('no matching socket: %s has no %s socket; its internet sockets are: %s'
                          % (who, request.describe(), _listing(inet)))
    usable = [i for i in matching if i.refusal() is None]
    if not usable:
        raise SocketError('no usable socket: %s has %s but %s' % (
            who, 'a matching socket' if len(matching) == 1 else '%d matching sockets' % len(matching),
            '; '.join('socket %d is %s' % (i.fd, i.refusal()) for i in matching[:LIST_LIMIT])))
    here = [i for i in usable if namespace_refusal(i, netns_inode) is None]
    if not here:
        raise SocketError('wrong network namespace: in %s, %s' % (who, '; '.join(
            'socket %d (%s) is %s' % (i.fd, i.describe(), namespace_refusal(i, netns_inode))
            for i in usable[:LIST_LIMIT])))
    distinct = []
    for info in here:
        if info.cookie not in [d.cookie for d in distinct]:
            distinct.append(info)
    if len(distinct) == 1:
        return distinct[0]
    first = distinct[0]
    group = (first.family, first.proto_name, first.address, first.port)
    if all(d.reuseport and (d.family, d.proto_name, d.address, d.port) == group for d in distinct):
        return first
    raise SocketError('several sockets match %s in %s and they are not one SO_REUSEPORT group: %s; name %s'
                      % (request.describe(), who, _listing(distinct),
                         'the fd' if request.address is not None else 'the address or the fd'))


# --- the process --------------------------------------------------------------------

def read_pidfile(path):
    """The pid in a pid file (first line, surrounding blanks ignored)."""
    try:
        with open(path) as f:
            text = f.read(4096)
    except (IOError, OSError) as exc:
        raise SocketError('cannot read pidfile %s: %s' % (path, exc.strerror))
    return parse_pid(text.split('\n', 1)[0], 'pidfile %s' % path)


def parse_pid(text, where):
    value = text.strip()
    if not re.match(r'^[0-9]+$', value) or int(value) <= 0:
        raise SocketError('%s does not hold a process id: %r' % (where, value[:64]))
    return int(value)


def main_pid_of_unit(unit, run_command, systemctl='systemctl'):
    """MainPID of a systemd unit; ``run_command(argv) -> (rc, stdout, stderr)``."""
    rc, out, err = run_command([systemctl, 'show', '-p', 'MainPID', '--value', '--', unit])
    if rc != 0:
        raise SocketError('cannot ask systemd for the main process of unit %s: %s'
                          % (unit, (err or out).strip() or 'systemctl exited with %d' % rc))
    value = out.strip()
    if value == '0' or value == '':
        raise SocketError('systemd unit %s has no main process (MainPID is %s): is it running?'
                          % (unit, value or 'empty'))
    return parse_pid(value, 'MainPID of systemd unit %s' % unit)


def _permission_hint():
    try:
        with open('/proc/sys/kernel/yama/ptrace_scope') as f:
            scope = f.read().strip()
    except (IOError, OSError):
        scope = None
    hint = 'taking its descriptors needs ptrace access to it (root with CAP_SYS_PTRACE)'
    if scope and scope != '0':
        hint += '; kernel.yama.ptrace_scope is %s' % scope
        if scope == '3':
            hint += ', which forbids it for everyone'
    return hint


def _socket_inode(link):
    m = re.match(r'^socket:\[([0-9]+)\]$', link)
    return int(m.group(1)) if m else None


class Process(object):
    """A running process, held by a pidfd so a recycled pid cannot swap it."""

    def __init__(self, pid):
        self.pid = pid
        try:
            self.pidfd = pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise SocketError('no such process: pid %d' % pid)
            if exc.errno == errno.ENOSYS:
                raise SocketError('this kernel has no pidfd_open (Linux 5.3+, pidfd_getfd 5.6+ needed)')
            raise SocketError('cannot open pid %d: %s' % (pid, exc.strerror))
        try:
            with open('/proc/%d/comm' % pid) as f:
                self.command = f.read().strip()
        except (IOError, OSError):
            self.command = None

    @property
    def who(self):
        return 'pid %d (%s)' % (self.pid, self.command) if self.command else 'pid %d' % self.pid

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def socket_fds(self):
        """[(fd, inode)] of the process's socket descriptors, by /proc/<pid>/fd."""
        base = '/proc/%d/fd' % self.pid
        try:
            names = os.listdir(base)
        except OSError as exc:
            raise self._error(exc, 'cannot list the descriptors of %s' % self.who)
        out = []
        for name in names:
            try:
                inode = _socket_inode(os.readlink(os.path.join(base, name)))
            except OSError:
                continue  # closed meanwhile
            if inode is not None:
                out.append((int(name), inode))
        return sorted(out)

    def _error(self, exc, what):
        if exc.errno in (errno.EPERM, errno.EACCES):
            return SocketError('permission denied: %s: %s' % (what, _permission_hint()))
        if exc.errno == errno.ESRCH or (exc.errno == errno.ENOENT and not os.path.exists('/proc/%d' % self.pid)):
            return SocketError('%s: the process has exited' % what)
        if exc.errno == errno.ENOSYS:
            return SocketError('%s: this kernel has no pidfd_getfd (Linux 5.6+ needed)' % what)
        return SocketError('%s: %s' % (what, exc.strerror))

    def dup(self, fd):
        """Our own socket object for descriptor ``fd`` of the process (caller closes it)."""
        try:
            local = pidfd_getfd(self.pidfd, fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise SkippedDescriptor('%s has no descriptor %d' % (self.who, fd))
            raise self._error(exc, 'cannot take descriptor %d of %s' % (fd, self.who))
        try:
            return socket.socket(fileno=local)
        except OSError as exc:
            os.close(local)
            if exc.errno == errno.ENOTSOCK:
                try:
                    target = os.readlink('/proc/%d/fd/%d' % (self.pid, fd))
                except OSError:
                    target = 'something else'
                raise SkippedDescriptor('descriptor %d of %s is not a socket but %s' % (fd, self.who, target))
            raise SkippedDescriptor('cannot inspect descriptor %d of %s: %s' % (fd, self.who, exc.strerror))

    def inspect(self, fd, inode=None):
        """(SocketInfo, socket object) of descriptor ``fd``; the caller closes the socket."""
        sock = self.dup(fd)
        try:
            return inspect_socket(sock, fd, inode or os.fstat(sock.fileno()).st_ino), sock
        except OSError as exc:
            sock.close()
            raise SkippedDescriptor('cannot inspect socket %d of %s: %s' % (fd, self.who, exc.strerror))
        except Exception:
            sock.close()
            raise


def find_socket(proc, request, netns_inode):
    """(SocketInfo, open socket object) of the socket ``request`` names in ``proc``.

    The match form duplicates every socket descriptor of the process to read
    its options (the /proc/net tables cannot tell SO_REUSEPORT or the socket's
    namespace). Only matching candidates stay open until one is chosen, so the
    chosen one cannot be swapped for another socket under the same number.
    """
    if request.fd is not None:
        info, sock = proc.inspect(request.fd)
        try:
            check_named_socket(info, request, netns_inode, proc.who)
        except Exception:
            sock.close()
            raise
        return info, sock
    infos, kept = [], {}
    try:
        for fd, inode in proc.socket_fds():
            try:
                info, sock = proc.inspect(fd, inode)
            except SkippedDescriptor:
                continue
            infos.append(info)
            if request.matches(info):
                kept[fd] = sock
            else:
                sock.close()
        chosen = choose_socket(infos, request, netns_inode, proc.who)
        return chosen, kept.pop(chosen.fd)
    finally:
        for sock in kept.values():
            sock.close()


# --- who owns a registered socket ------------------------------------------------------

_NLMSG = struct.Struct('=IHHII')
_DIAG_REQ = struct.Struct('=BBBBI48s')
_DIAG_MSG = struct.Struct('=BBBB2s2s16s16sIIIIIIII')
SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10


def parse_diag_messages(data):
    """Parse one netlink datagram of inet_diag replies: ([(cookie, inode, address, port)], done)."""
    records, offset, done = [], 0, False
    while offset + _NLMSG.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            err = -struct.unpack_from('=i', data, offset + _NLMSG.size)[0]
            raise OSError(err, os.strerror(err))
        elif length >= _NLMSG.size + _DIAG_MSG.size:
            fields = _DIAG_MSG.unpack_from(data, offset + _NLMSG.size)
            family, sport, src = fields[0], fields[4], fields[6]
            cookie = fields[9] | (fields[10] << 32)
            inode = fields[15]
            raw = src[:4] if family == socket.AF_INET else src
            records.append((cookie, inode, ipaddress.ip_address(raw), struct.unpack('>H', sport)[0]))
        offset += (length + 3) & ~3
    return records, done


def _diag_socket(netns_fd):
    """A NETLINK_SOCK_DIAG socket in another network namespace.

    setns() only moves the calling thread, so a short-lived thread enters the
    namespace and creates the socket there; the module's own thread never
    changes namespace. Sockets stay in the namespace they were created in.
    """
    box = {}

    def enter():
        try:
            if _libc().setns(netns_fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            box['sock'] = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            box['error'] = exc

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if 'error' in box:
        raise box['error']
    return box['sock']


def _netns_fd(netns_inode):
    """An open descriptor of the network namespace with that inode, found
    among named namespaces and processes' namespaces; None if none is found."""
    candidates = ['/proc/self/ns/net']
    try:
        candidates += [os.path.join('/run/netns', n) for n in sorted(os.listdir('/run/netns'))]
    except OSError:
        pass
    candidates += ['/proc/%s/ns/net' % p for p in os.listdir('/proc') if p.isdigit()]
    for path in candidates:
        try:
            if os.stat(path).st_ino == netns_inode:
                return os.open(path, os.O_RDONLY)
        except OSError:
            continue
    return None


def _inode_owners(inodes):
    """{socket inode: lowest pid holding it} by scanning /proc/<pid>/fd."""
    links = dict(('socket:[%d]' % i, i) for i in inodes)
    owners = {}
    if not links:
        return owners
    for pid in sorted((int(p) for p in os.listdir('/proc') if p.isdigit())):
        base = '/proc/%d/fd' % pid
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                inode = links.get(os.readlink(os.path.join(base, name)))
            except OSError:
                continue
            if inode is not None and inode not in owners:
                owners[inode] = pid
        if len(owners) == len(links):
            break
    return owners


def _comm(pid):
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def socket_owners(cookies, netns_inode):
    """Best effort: {cookie: {address, port, pid, command}} for registered sockets.

    The SOCKMAP only tells a socket's cookie. sock_diag in the dispatcher's
    namespace maps cookies to inodes and addresses, and /proc maps inodes to
    processes. Any failure just leaves a socket out: this only feeds reports.
    """
    cookies = set(c for c in cookies if c is not None)
    if not cookies or netns_inode is None:
        return {}
    try:
        ns_fd = _netns_fd(netns_inode)
        if ns_fd is None:
            return {}
        try:
            sock = _diag_socket(ns_fd)
        finally:
            os.close(ns_fd)
        found = {}
        with sock:
            sock.settimeout(5)
            seq = 0
            for family in INET_FAMILIES:
                for proto, states in ((socket.IPPROTO_TCP, 1 << TCP_LISTEN), (socket.IPPROTO_UDP, 0xffffffff)):
                    seq += 1
                    req = _DIAG_REQ.pack(family, proto, 0, 0, states, b'\0' * 48)
                    sock.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY,
                                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
                    done = False
                    while not done:
                        records, done = parse_diag_messages(sock.recv(65536))
                        for cookie, inode, address, port in records:
                            if cookie in cookies:
                                found[cookie] = (inode, address, port)
        owners = _inode_owners([inode for inode, _a, _p in found.values()])
    except (OSError, struct.error, ValueError):
        return {}
    out = {}
    for cookie, (inode, address, port) in found.items():
        pid = owners.get(inode)
        out[cookie] = {'address': str(address), 'port': port, 'pid': pid,
                       'command': _comm(pid) if pid else None}
    return out


# --- registering ---------------------------------------------------------------------

def _destination_state(label, family, protocol, cookie, owner=None):
    """One destination's socket as shown in diffs."""
    owner = owner or {}
    return {'label': label, 'family': bnd.FAMILY_NAMES.get(family, str(family)),
            'protocol': protocol if isinstance(protocol, str) else bnd.PROTOCOL_NAMES.get(protocol, str(protocol)),
            'socket_cookie': cookie, 'address': owner.get('address'), 'port': owner.get('port'),
            'pid': owner.get('pid'), 'command': owner.get('command')}


def not_loaded(pin_dir):
    return SocketError('no dispatcher is loaded at %s: load it with sk_lookup_program first (check instance '
                       'and bpffs)' % pin_dir)


def attached_netns(disp):
    netns = disp.program()['netns_inode']
    if netns is None:
        raise SocketError('the dispatcher at %s is not attached to a network namespace any more (its namespace '
                          'is gone); load it again with sk_lookup_program' % disp.pin_dir)
    return netns


def register(disp, label, pid, request, check_mode=False):
    """Make ``pid``'s socket the socket of destination (label, its family, its protocol).

    The SOCKMAP update replaces the previous socket in one step: lookups see
    the old socket or the new one, so no new connection is refused, and
    established connections stay with the socket that accepted them.
    Idempotent by socket cookie. Returns a dict for the module result.
    """
    bnd.check_label(label)
    netns = attached_netns(disp)
    with Process(pid) as proc:
        info, sock = find_socket(proc, request, netns)
        with sock:
            existing = disp.destinations_raw()
            key = (label, info.family, bnd.PROTOCOLS[info.proto_name])
            dest_id = existing.get(key)
            before_cookie = disp.socket_cookies().get(dest_id) if dest_id is not None else None
            changed = before_cookie != info.cookie
            if changed and not check_mode:
                dest_id = disp.ensure_destination(label, info.family, info.proto_name, existing)
                cookie = disp.set_socket(dest_id, sock.fileno())
                if cookie != info.cookie:
                    raise SocketError('the kernel registered socket cookie %d instead of %d for %s'
                                      % (cookie, info.cookie, label))
        # The duplicate is closed here: from now on only the service keeps the socket alive.
        owner = {'address': str(info.address), 'port': info.port, 'pid': proc.pid, 'command': proc.command}
    previous = None
    if before_cookie is not None:
        previous = owner if before_cookie == info.cookie else socket_owners([before_cookie], netns).get(before_cookie)
    socket_data = info.as_dict()
    socket_data.update({'pid': proc.pid, 'command': proc.command})
    previous_data = None
    if before_cookie is not None:
        previous_data = dict({'cookie': before_cookie, 'address': None, 'port': None, 'pid': None, 'command': None},
                             **(previous or {}))
    return {
        'changed': changed,
        'socket': socket_data,
        'destination': {'label': label, 'family': info.family_name, 'protocol': info.proto_name, 'id': dest_id},
        'previous_socket': previous_data,
        'before': _destination_state(label, info.family, info.proto_name, before_cookie, previous),
        'after': _destination_state(label, info.family, info.proto_name, info.cookie, owner),
    }


def unregister(disp, label, family=None, protocol=None, check_mode=False):
    """Remove the sockets of ``label``'s destinations (optionally one family/protocol).

    A destination no binding uses any more is forgotten too; one that
    bindings still use stays, without a socket, so its traffic meets the
    program's missing_socket policy until a socket is registered again.
    Destinations of other labels are left alone.
    """
    bnd.check_label(label)
    fam = FAMILY_BY_NAME[family] if family is not None else None
    proto = bnd.PROTOCOLS[bnd.parse_protocol(protocol)] if protocol is not None else None
    raw = disp.destinations_raw()
    targets = dict((k, v) for k, v in raw.items()
                   if k[0] == label and (fam is None or k[1] == fam) and (proto is None or k[2] == proto))
    cookies = disp.socket_cookies()
    used = disp.used_destination_ids()
    program = disp.program()
    owners = socket_owners([cookies.get(i) for i in targets.values()], program['netns_inode'])
    before, after, removed, dropped = [], [], [], []
    for (lab, f, p), dest_id in sorted(targets.items()):
        cookie = cookies.get(dest_id)
        state = _destination_state(lab, f, p, cookie, owners.get(cookie))
        before.append(state)
        if cookie is not None:
            removed.append(state)
        if dest_id in used:
            after.append(_destination_state(lab, f, p, None))
        else:
            dropped.append({'label': lab, 'family': state['family'], 'protocol': state['protocol']})
    if not check_mode:
        for dest_id in targets.values():
            if dest_id in cookies:
                disp.clear_socket(dest_id)
        # Keep every destination that is not ours, whatever its state.
        keep = used | set(v for k, v in raw.items() if k not in targets)
        disp.drop_unused_destinations(keep)
    return {'changed': bool(removed or dropped), 'removed': removed, 'dropped_destinations': dropped,
            'before': before, 'after': after}
