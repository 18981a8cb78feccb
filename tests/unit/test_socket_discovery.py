"""Unit tests for socket_discovery: address matching, choosing among sockets, parsing.

No BPF is needed. A few tests inspect ordinary sockets of this very process
through pidfd_getfd (Linux 5.6+), which a process may always do to itself.
"""

import ipaddress
import os
import socket
import struct
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, '.build', 'collections'))

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd  # noqa: E402
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils.bindings import BindingError  # noqa: E402

TCP = (socket.SOCK_STREAM, socket.IPPROTO_TCP)
UDP = (socket.SOCK_DGRAM, socket.IPPROTO_UDP)
NETNS = 4026531840
WHO = 'pid 1234 (demo)'


def info(fd, proto='tcp', address='127.0.0.1', port=80, listening=None, peer=None, reuseport=False,
         cookie=None, netns=NETNS, family=None):
    """A SocketInfo as inspect_socket would build it."""
    addr = ipaddress.ip_address(address)
    family = family or (socket.AF_INET if addr.version == 4 else socket.AF_INET6)
    sotype, protocol = {'tcp': TCP, 'udp': UDP, 'raw': (socket.SOCK_RAW, 255)}[proto]
    if listening is None:
        listening = proto == 'tcp' and peer is None
    return sd.SocketInfo(fd=fd, inode=1000 + fd, family=family, sotype=sotype, protocol=protocol,
                         address=addr, port=port, peer=peer, listening=listening, reuseport=reuseport,
                         cookie=cookie if cookie is not None else 5000 + fd, netns_inode=netns)


def request(**kw):
    return sd.Request.from_params(**kw)


# --- addresses and requests ------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('127.0.0.1', '127.0.0.1'),
    (' 0.0.0.0 ', '0.0.0.0'),
    ('::', '::'),
    ('[::1]', '::1'),
    ('2001:DB8:0::1', '2001:db8::1'),
    ('fe80::1%lo', 'fe80::1'),
])
def test_parse_address(text, expected):
    assert str(sd.parse_address(text)) == expected


@pytest.mark.parametrize('text', ['127.0.0.0/8', 'localhost', '', '1.2.3.4:80', '%lo'])
def test_parse_address_refuses(text):
    with pytest.raises(sd.SocketError, match='address %r is not an IPv4 or IPv6 address' % text):
        sd.parse_address(text)


def test_request_address_sets_family():
    assert request(protocol='tcp', port=80, address='::').family == socket.AF_INET6
    assert request(protocol='tcp', port=80, address='0.0.0.0').family == socket.AF_INET


@pytest.mark.parametrize('kw, message', [
    (dict(protocol='tcp', port=80, address='::1', family='ipv4'), 'address ::1 is an ipv6 address but family is ipv4'),
    (dict(protocol='tcp', port=0), 'port must be 1..65535 .*got 0'),
    (dict(protocol='tcp', port=65536), 'got 65536'),
    (dict(protocol='tcp', port=True), 'got True'),
    (dict(port=80), 'name the socket by fd, or by protocol and port'),
    (dict(protocol='udp'), 'name the socket by fd, or by protocol and port'),
    (dict(fd=-1), 'fd must be a descriptor number .*got -1'),
    (dict(fd=3, family='ipv5'), "family must be 'ipv4' or 'ipv6', got 'ipv5'"),
])
def test_request_refuses_bad_input(kw, message):
    with pytest.raises(sd.SocketError, match=message):
        request(**kw)


def test_request_refuses_bad_protocol():
    with pytest.raises(BindingError, match="'sctp'"):
        request(protocol='sctp', port=80)


def test_request_with_fd_needs_nothing_else():
    req = request(fd=3)
    assert (req.fd, req.protocol, req.family, req.address, req.port) == (3, None, None, None, None)


def test_request_describe():
    assert request(protocol='tcp', port=80).describe() == 'tcp *:80'
    assert request(protocol='udp', port=53, address='::').describe() == 'udp [::]:53'
    assert request(protocol='tcp', port=80, family='ipv6').describe() == 'ipv6 tcp *:80'
    assert request(fd=4).describe() == 'tcp or udp *:*'


def test_wildcard_bind_matches_only_the_wildcard():
    wildcard = info(3, address='0.0.0.0', port=80)
    loopback = info(4, address='127.0.0.1', port=80)
    assert request(protocol='tcp', port=80, address='0.0.0.0').matches(wildcard)
    assert not request(protocol='tcp', port=80, address='127.0.0.1').matches(wildcard)
    assert not request(protocol='tcp', port=80, address='0.0.0.0').matches(loopback)
    assert request(protocol='tcp', port=80).matches(wildcard)
    assert request(protocol='tcp', port=80).matches(loopback)


def test_ipv6_matching():
    any6 = info(3, address='::', port=53, proto='udp')
    lo6 = info(4, address='::1', port=53, proto='udp')
    assert request(protocol='udp', port=53, address='::').matches(any6)
    assert not request(protocol='udp', port=53, address='::').matches(lo6)
    assert request(protocol='udp', port=53, address='0:0::1').matches(lo6)
    # An IPv4 wildcard is not the IPv6 one, and the other way round.
    assert not request(protocol='udp', port=53, address='0.0.0.0').matches(any6)
    assert not request(protocol='udp', port=53, family='ipv4').matches(any6)


def test_mismatch_names_the_difference():
    sock = info(7, address='127.0.0.1', port=80)
    assert request(fd=7, protocol='udp').mismatch(sock) == (
        'a TCP socket (tcp 127.0.0.1:80 listening), not udp as asked')
    assert request(fd=7, family='ipv6').mismatch(sock) == (
        'an ipv4 socket (tcp 127.0.0.1:80 listening), not ipv6 as asked')
    assert request(fd=7, port=81).mismatch(sock) == 'bound to 127.0.0.1:80, not to port 81 as asked'
    assert request(fd=7, address='0.0.0.0').mismatch(sock) == 'bound to 127.0.0.1:80, not to 0.0.0.0 as asked'
    assert request(fd=7, protocol='tcp', port=80).mismatch(sock) is None


# --- what is usable ---------------------------------------------------------------

def test_refusals():
    assert info(3).refusal() is None
    assert info(3, proto='udp').refusal() is None
    assert 'connected UDP socket' in info(3, proto='udp', peer='127.0.0.1:9').refusal()
    assert 'unbound UDP socket' in info(3, proto='udp', port=0).refusal()
    assert 'TCP socket that is not listening' in info(3, listening=False).refusal()
    assert 'connected to 10.0.0.1:5' in info(3, peer='10.0.0.1:5').refusal()
    assert 'neither a TCP nor a UDP socket' in info(3, proto='raw').refusal()
    unix = sd.SocketInfo(3, 1, socket.AF_UNIX, socket.SOCK_STREAM, 0, None, None, None, False, False, None, None)
    assert unix.refusal() == 'not an internet socket but a unix socket'
    assert unix.describe() == 'unix socket'


def test_describe():
    assert info(3).describe() == 'tcp 127.0.0.1:80 listening'
    assert info(3, address='::', proto='udp', port=53, reuseport=True).describe() == 'udp [::]:53 (SO_REUSEPORT)'


def test_check_named_socket_messages():
    udp = info(7, proto='udp', peer='127.0.0.1:9', port=5000)
    with pytest.raises(sd.SocketError) as exc:
        sd.check_named_socket(udp, request(fd=7), NETNS, WHO)
    assert str(exc.value).startswith('socket 7 of pid 1234 (demo) is a connected UDP socket')
    # What was asked is checked before the socket's state.
    with pytest.raises(sd.SocketError, match='is a UDP socket .*not tcp as asked'):
        sd.check_named_socket(udp, request(fd=7, protocol='tcp'), NETNS, WHO)
    with pytest.raises(sd.SocketError, match='socket 7 of pid 1234 \\(demo\\) is in network namespace inode 1, but '
                                             'the dispatcher is attached to network namespace inode %d' % NETNS):
        sd.check_named_socket(info(7, netns=1), request(fd=7), NETNS, WHO)
    assert sd.check_named_socket(info(7), request(fd=7, protocol='tcp'), NETNS, WHO).fd == 7


# --- choosing among a process's sockets ------------------------------------------------

def test_choose_single():
    socks = [info(3, port=22), info(5, port=80), info(6, proto='udp', port=80)]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO).fd == 5
    assert sd.choose_socket(socks, request(protocol='udp', port=80), NETNS, WHO).fd == 6


def test_choose_ignores_accepted_connections_on_the_same_port():
    socks = [info(3, port=80), info(9, port=80, peer='127.0.0.1:40000'), info(10, port=80, peer='127.0.0.1:40001')]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO).fd == 3


def test_choose_duplicated_descriptors_of_one_socket():
    socks = [info(9, cookie=77), info(4, cookie=77)]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO).fd == 4


def test_choose_reuseport_group_takes_lowest_fd():
    socks = [info(8, reuseport=True), info(6, reuseport=True), info(7, reuseport=True)]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO).fd == 6


@pytest.mark.parametrize('socks', [
    [info(3, address='127.0.0.1'), info(4, address='127.0.0.2')],
    [info(3, address='127.0.0.1', reuseport=True), info(4, address='0.0.0.0', reuseport=True)],
    [info(3, reuseport=True), info(4, reuseport=False)],
    [info(3, proto='udp'), info(4, proto='udp')],
])
def test_choose_refuses_several_groups(socks):
    req = request(protocol=sd.PROTOCOL_OF[(socks[0].sotype, socks[0].protocol)], port=80)
    with pytest.raises(sd.SocketError) as exc:
        sd.choose_socket(socks, req, NETNS, WHO)
    msg = str(exc.value)
    assert 'several sockets match' in msg and 'not one SO_REUSEPORT group' in msg
    assert 'socket 3: ' in msg and 'socket 4: ' in msg and WHO in msg


def test_choose_address_disambiguates():
    socks = [info(3, address='127.0.0.1'), info(4, address='127.0.0.2')]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80, address='127.0.0.2'), NETNS, WHO).fd == 4


def test_choose_nothing_matches_lists_what_was_found():
    socks = [info(3, port=22), info(4, proto='udp', port=53)]
    with pytest.raises(sd.SocketError) as exc:
        sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO)
    assert str(exc.value) == ('no matching socket: pid 1234 (demo) has no tcp *:80 socket; its internet sockets '
                              'are: socket 3: tcp 127.0.0.1:22 listening; socket 4: udp 127.0.0.1:53')


def test_choose_only_unusable():
    socks = [info(3, proto='udp', peer='127.0.0.1:9')]
    with pytest.raises(sd.SocketError, match='no usable socket: .* socket 3 is a connected UDP socket'):
        sd.choose_socket(socks, request(protocol='udp', port=80), NETNS, WHO)


def test_choose_wrong_namespace():
    with pytest.raises(sd.SocketError,
                       match=r'wrong network namespace: in pid 1234 \(demo\), socket 3 \(tcp .*inode 99'):
        sd.choose_socket([info(3, netns=99)], request(protocol='tcp', port=80), NETNS, WHO)


def test_choose_prefers_the_dispatchers_namespace():
    socks = [info(3, netns=99), info(4)]
    assert sd.choose_socket(socks, request(protocol='tcp', port=80), NETNS, WHO).fd == 4


def test_listing_is_limited():
    socks = [info(i, port=1000 + i) for i in range(3, 40)]
    with pytest.raises(sd.SocketError, match='and %d more$' % (37 - sd.LIST_LIMIT)):
        sd.choose_socket(socks, request(protocol='udp', port=80), NETNS, WHO)


# --- pids ------------------------------------------------------------------------------------

def test_read_pidfile(tmp_path):
    path = tmp_path / 'svc.pid'
    path.write_text(' 4242 \nignored\n')
    assert sd.read_pidfile(str(path)) == 4242
    path.write_text('nope\n')
    with pytest.raises(sd.SocketError, match="pidfile .* does not hold a process id: 'nope'"):
        sd.read_pidfile(str(path))
    with pytest.raises(sd.SocketError, match='cannot read pidfile .*missing.pid'):
        sd.read_pidfile(str(tmp_path / 'missing.pid'))


def test_main_pid_of_unit():
    calls = []

    def run(argv):
        calls.append(argv)
        return {'web.service': (0, '4242\n', ''), 'stopped.service': (0, '0\n', ''),
                'bad.service': (1, '', 'Failed to connect to bus\n')}[argv[-1]]

    assert sd.main_pid_of_unit('web.service', run, '/bin/systemctl') == 4242
    assert calls[0] == ['/bin/systemctl', 'show', '-p', 'MainPID', '--value', '--', 'web.service']
    with pytest.raises(sd.SocketError, match='unit stopped.service has no main process .*is it running'):
        sd.main_pid_of_unit('stopped.service', run)
    with pytest.raises(sd.SocketError, match='unit bad.service: Failed to connect to bus'):
        sd.main_pid_of_unit('bad.service', run)


def test_syscall_numbers():
    assert sd.pidfd_syscall_numbers('x86_64') == (434, 438)
    assert sd.pidfd_syscall_numbers('aarch64') == (434, 438)
    with pytest.raises(sd.SocketError, match="machine 'alpha'"):
        sd.pidfd_syscall_numbers('alpha')


# --- sock_diag parsing -------------------------------------------------------------------

def _diag(family, address, port, cookie, inode):
    raw = ipaddress.ip_address(address).packed.ljust(16, b'\0')
    msg = sd._DIAG_MSG.pack(family, 10, 0, 0, struct.pack('>H', port), b'\0\0', raw, b'\0' * 16, 0,
                            cookie & 0xffffffff, cookie >> 32, 0, 0, 0, 0, inode)
    return sd._NLMSG.pack(sd._NLMSG.size + len(msg), sd.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + msg


def test_parse_diag_messages():
    data = _diag(socket.AF_INET, '127.0.0.1', 7777, (5 << 32) | 9, 321) + _diag(socket.AF_INET6, '::1', 53, 12, 654)
    records, done = sd.parse_diag_messages(data)
    assert not done
    assert records == [((5 << 32) | 9, 321, ipaddress.ip_address('127.0.0.1'), 7777),
                       (12, 654, ipaddress.ip_address('::1'), 53)]
    records, done = sd.parse_diag_messages(sd._NLMSG.pack(20, sd.NLMSG_DONE, 2, 1, 0) + b'\0' * 4)
    assert done and records == []


# --- real sockets of this process ------------------------------------------------------------

@pytest.fixture
def me():
    with sd.Process(os.getpid()) as proc:
        yield proc


def _open_fds():
    return len(os.listdir('/proc/self/fd'))


def test_find_listening_socket(me):
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        udp.bind(('127.0.0.1', 0))
        port = listener.getsockname()[1]
        before = _open_fds()
        found, sock = sd.find_socket(me, request(protocol='tcp', port=port), None)
        sock.close()
        assert _open_fds() == before  # no duplicate left behind
        assert found.fd == listener.fileno()
        assert found.cookie == sd.socket_cookie(listener)
        assert (found.proto_name, found.family_name, str(found.address), found.port) == (
            'tcp', 'ipv4', '127.0.0.1', port)
        assert found.listening and not found.reuseport and found.peer is None
        if found.netns_inode is not None:  # SIOCGSKNS needs CAP_NET_ADMIN
            assert found.netns_inode == os.stat('/proc/self/ns/net').st_ino


def test_find_by_fd_refuses_connected_udp(me):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(('127.0.0.1', 0))
        udp.connect(('127.0.0.1', 9))
        with pytest.raises(sd.SocketError, match='socket %d of pid %d .* is a connected UDP socket' % (
                udp.fileno(), os.getpid())):
            sd.find_socket(me, request(fd=udp.fileno()), None)


def test_find_by_fd_refuses_what_is_not_a_socket(me, tmp_path):
    with open(str(tmp_path / 'file'), 'w') as f:
        with pytest.raises(sd.SocketError, match='descriptor %d of pid %d .* is not a socket but %s'
                                                 % (f.fileno(), os.getpid(), tmp_path)):
            sd.find_socket(me, request(fd=f.fileno()), None)
    with pytest.raises(sd.SocketError, match='has no descriptor 999'):
        sd.find_socket(me, request(fd=999), None)


def test_reuseport_group_of_real_sockets(me):
    socks = []
    try:
        for _attempt in range(3):
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(('::1', socks[0].getsockname()[1] if socks else 0))
            s.listen()
            socks.append(s)
        port = socks[0].getsockname()[1]
        found, sock = sd.find_socket(me, request(protocol='tcp', port=port, address='::1'), None)
        sock.close()
        assert found.fd == min(s.fileno() for s in socks) and found.reuseport
    finally:
        for s in socks:
            s.close()


def test_no_such_process():
    with pytest.raises(sd.SocketError, match='^no such process: pid 4194304$'):
        sd.Process(4194304)
