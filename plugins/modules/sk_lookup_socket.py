#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, bpfsteer.sk_lookup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: sk_lookup_socket
short_description: Register a running service's socket as the socket of a sk_lookup destination
version_added: 1.0.0
author:
  - bpfsteer.sk_lookup contributors (!UNKNOWN)
description:
  - Takes a listening TCP socket or a bound, unconnected UDP socket from a running process with
    C(pidfd_open) and C(pidfd_getfd) and puts it into the dispatcher's socket map as the socket of
    the destination (O(label), family of the socket, protocol of the socket). Bindings that point at
    the label then deliver new connections and datagrams to that socket.
  - The service needs no change and no restart; it keeps its socket and simply receives the traffic.
  - Registering another socket for a destination replaces the old one in one map update. New
    connections go to the new socket, established connections stay with the old process, and no
    connection is refused in between; this is the graceful restart or blue/green switch.
  - Idempotent by socket cookie; registering the socket that is already registered changes nothing.
  - The module does not keep the socket open. When the service exits, the kernel removes its socket
    from the map and M(bpfsteer.sk_lookup.sk_lookup_info) shows the destination without a socket.
  - Before a socket is registered it is checked. It must be an IPv4 or IPv6 socket, TCP and listening
    or UDP and bound but not connected, of the family and protocol asked for, and in the network
    namespace the dispatcher is attached to. Each refusal names the process, the descriptor and the
    reason.
  - Runs on one instance are serialised with a lock under C(/run/lock/bpfsteer-sk_lookup).
extends_documentation_fragment:
  - bpfsteer.sk_lookup.instance
  - bpfsteer.sk_lookup.instance.check_mode
options:
  label:
    description:
      - Name of the destination, as used by the bindings.
      - Printable ASCII without spaces, at most 63 bytes.
    type: str
    required: true
  pid:
    description:
      - Process that owns the socket.
      - With O(state=present) exactly one of O(pid), O(pidfile) and O(systemd_unit) is required.
    type: int
  pidfile:
    description:
      - File holding the process id of the process that owns the socket (first line).
    type: path
  systemd_unit:
    description:
      - systemd unit whose main process (C(systemctl show -p MainPID --value UNIT)) owns the socket.
    type: str
  fd:
    description:
      - Descriptor number of the socket in the process, as listed in C(/proc/PID/fd).
      - Without O(fd), the socket is found by O(protocol), O(port) and optionally O(address) and
        O(family); with O(fd) those options are optional and, when given, the socket must match them.
    type: int
  protocol:
    description:
      - Protocol of the socket. Required when the socket is found by O(port).
    type: str
    choices: [tcp, udp]
  address:
    description:
      - Address the socket is bound to, exactly. A socket bound to V(0.0.0.0) matches only V(0.0.0.0),
        not V(127.0.0.1); a socket bound to V(::) matches only V(::).
      - Also selects the family. Default is any address; then the sockets on O(port) must be one
        socket or one C(SO_REUSEPORT) group, otherwise the module lists them and fails.
    type: str
  port:
    description:
      - Port the socket is bound to (1 to 65535). Required unless O(fd) is given.
    type: int
  family:
    description:
      - Family of the socket, V(ipv4) or V(ipv6). The destination's family is always the socket's own.
      - With O(state=absent), removes only the destination of that family.
    type: str
    choices: [ipv4, ipv6]
  state:
    description:
      - V(present) registers the socket. V(absent) removes the socket of the O(label)'s destinations
        (only of O(family) and O(protocol) when given) and forgets destinations no binding uses any more.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - Linux 5.6 or later (C(pidfd_getfd))
  - ptrace access to the process (root with C(CAP_SYS_PTRACE)); C(kernel.yama.ptrace_scope=3) forbids it
notes:
  - Among the C(SO_REUSEPORT) sockets of one group the one with the lowest descriptor is registered; the
    kernel still balances new connections over the whole group.
  - A UDP service answers from the address its socket is bound to unless it sets the source itself
    (C(IP_PKTINFO) or C(IPV6_PKTINFO) with the destination address of the request). Clients that
    connect their UDP socket drop answers from any other address.
  - Like receiving a descriptor over a UNIX socket, C(pidfd_getfd) moves the socket's cgroup v1
    C(net_cls) and C(net_prio) settings to those of the module; cgroup v2 is not affected.
seealso:
  - module: bpfsteer.sk_lookup.sk_lookup_program
  - module: bpfsteer.sk_lookup.sk_lookup_binding
  - module: bpfsteer.sk_lookup.sk_lookup_info
'''

EXAMPLES = r'''
- name: Send the web label to nginx's listening socket on 127.0.0.1:8080
  bpfsteer.sk_lookup.sk_lookup_socket:
    label: web
    systemd_unit: nginx.service
    protocol: tcp
    address: 127.0.0.1
    port: 8080

- name: A DNS server's UDP socket, by pid file and descriptor number
  bpfsteer.sk_lookup.sk_lookup_socket:
    label: dns
    pidfile: /run/unbound.pid
    fd: 5
    protocol: udp

- name: Switch the web label to the new release's process (blue/green)
  bpfsteer.sk_lookup.sk_lookup_socket:
    label: web
    pid: "{{ green_pid }}"
    protocol: tcp
    port: 8081
  register: switched

- name: Remove the label's sockets in the dispatcher of a container's namespace
  bpfsteer.sk_lookup.sk_lookup_socket:
    instance: edge
    label: web
    state: absent
'''

RETURN = r'''
pin_dir:
  description: Directory of the instance's pins.
  returned: always
  type: str
  sample: /sys/fs/bpf/sk_lookup/dispatch
socket:
  description: The socket that is (or in check mode would be) registered.
  returned: when O(state=present)
  type: dict
  contains:
    cookie:
      description: Kernel socket cookie, as M(bpfsteer.sk_lookup.sk_lookup_info) shows it.
      type: int
    family:
      description: V(ipv4) or V(ipv6).
      type: str
    protocol:
      description: V(tcp) or V(udp).
      type: str
    address:
      description: Address the socket is bound to.
      type: str
    port:
      description: Port the socket is bound to.
      type: int
    fd:
      description: Descriptor number of the socket in the process.
      type: int
    reuseport:
      description: Whether the socket has C(SO_REUSEPORT) set.
      type: bool
    pid:
      description: Process the socket was taken from.
      type: int
    command:
      description: Its command name (C(/proc/PID/comm)).
      type: str
  sample:
    cookie: 4097
    family: ipv4
    protocol: tcp
    address: 127.0.0.1
    port: 7777
    fd: 3
    reuseport: false
    pid: 1234
    command: python3
destination:
  description: The destination the socket serves; RV(destination.id) is null in check mode for a new one.
  returned: when O(state=present)
  type: dict
  contains:
    label:
      description: Label of the destination.
      type: str
    family:
      description: V(ipv4) or V(ipv6).
      type: str
    protocol:
      description: V(tcp) or V(udp).
      type: str
    id:
      description: Destination id (index into the sockets map); null in check mode for a new destination.
      type: int
  sample: {label: echo, family: ipv4, protocol: tcp, id: 0}
previous_socket:
  description:
    - The socket the destination had before, null when it had none. Address, port and owning process are
      looked up through sock_diag and C(/proc) and are null when they cannot be found.
  returned: when O(state=present)
  type: dict
  sample: {cookie: 4090, address: 127.0.0.1, port: 7000, pid: 1200, command: python3}
removed:
  description: Destinations whose socket was (or in check mode would be) removed, with that socket.
  returned: when O(state=absent)
  type: list
  elements: dict
  sample:
    - {label: echo, family: ipv4, protocol: tcp, socket_cookie: 4097, address: 127.0.0.1, port: 7777,
       pid: 1234, command: python3}
dropped_destinations:
  description: Destinations of the label that no binding uses and that were forgotten.
  returned: when O(state=absent)
  type: list
  elements: dict
  sample:
    - {label: echo, family: ipv4, protocol: tcp}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import module_support as ms

PRESENT_ONLY = ('pid', 'pidfile', 'systemd_unit', 'fd', 'address', 'port')


def _pid(module):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd
    p = module.params
    if p['pid'] is not None:
        if p['pid'] <= 0:
            raise sd.SocketError('pid must be a positive process id, got %d' % p['pid'])
        return p['pid']
    if p['pidfile'] is not None:
        return sd.read_pidfile(p['pidfile'])
    systemctl = module.get_bin_path('systemctl')
    if systemctl is None:
        raise sd.SocketError('systemd_unit %s: systemctl is not installed' % p['systemd_unit'])
    return sd.main_pid_of_unit(p['systemd_unit'], module.run_command, systemctl)


def present(module, pin_dir):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd
    p = module.params
    request = sd.Request.from_params(fd=p['fd'], protocol=p['protocol'], family=p['family'],
                                     address=p['address'], port=p['port'])
    pid = _pid(module)
    with d.InstanceLock(pin_dir):
        disp = d.open_dispatcher(pin_dir)
        if disp is None:
            raise sd.not_loaded(pin_dir)
        with disp:
            return sd.register(disp, p['label'], pid, request, check_mode=module.check_mode)


def absent(module, pin_dir):
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import dispatcher as d
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import socket_discovery as sd
    p = module.params
    extra = [name for name in PRESENT_ONLY if p[name] is not None]
    if extra:
        raise sd.SocketError('state=absent takes label and optionally family and protocol, not %s (those '
                             'name a process and its socket, for state=present)' % ', '.join(extra))
    nothing = {'changed': False, 'removed': [], 'dropped_destinations': [], 'before': [], 'after': []}
    if not d.is_bpffs(p['bpffs']):
        return nothing
    with d.InstanceLock(pin_dir):
        disp = d.open_dispatcher(pin_dir)
        if disp is None:
            return nothing
        with disp:
            return sd.unregister(disp, p['label'], p['family'], p['protocol'], check_mode=module.check_mode)


def main():
    module = AnsibleModule(
        argument_spec=ms.instance_args(
            label=dict(type='str', required=True),
            pid=dict(type='int'),
            pidfile=dict(type='path'),
            systemd_unit=dict(type='str'),
            fd=dict(type='int'),
            protocol=dict(type='str', choices=['tcp', 'udp']),
            address=dict(type='str'),
            port=dict(type='int'),
            family=dict(type='str', choices=['ipv4', 'ipv6']),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        ),
        mutually_exclusive=[('pid', 'pidfile', 'systemd_unit')],
        required_if=[('state', 'present', ('pid', 'pidfile', 'systemd_unit'), True)],
        supports_check_mode=True,
    )
    ms.require_environment(module)
    pin_dir = ms.pin_dir_of(module)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings

    def body():
        bindings.check_label(module.params['label'])
        if module.params['state'] == 'present':
            return present(module, pin_dir)
        return absent(module, pin_dir)

    outcome = ms.run(module, body)
    before, after = outcome.pop('before'), outcome.pop('after')
    result = dict(outcome, pin_dir=pin_dir)
    if module._diff:
        result['diff'] = dict(before=before, after=after,
                              before_header='%s %s (before)' % (pin_dir, module.params['label']),
                              after_header='%s %s (after)' % (pin_dir, module.params['label']))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
