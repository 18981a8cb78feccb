"""3. One TCP service on all 65,535 ports of an address: the alternatives.

  sockets     one listening socket per port (65,535 sockets, one epoll loop)
  tproxy      an nftables TPROXY rule (tcp dport 1-65535 -> one transparent
              socket), plus the usual fwmark policy route
  dispatcher  one socket, steered by the dispatch program with one binding
              (tcp <address>/32 port 0)
  one port    reference: a plain listener on a single port (nothing to steer)

Each alternative has its own server namespace, joined to one client namespace
by a veth pair (198.18.N.1 server, 198.18.N.2 client). TPROXY only acts on
packets that arrive through an interface, and a client in another namespace is
what a remote client looks like; it also keeps the client's own ephemeral
ports out of the way of 65,535 bound ports.

Measured per alternative:
  setup   wall time to make the service answer on every port: opening the
          sockets (the C loop); `nft -f` plus `ip rule`/`ip route`; the
          Ansible tasks (program, binding, socket) and, separately, the kernel
          work of the binding and registration without Ansible
  memory  the server process's memory cgroup (user pages plus the kernel's
          socket, file and epoll objects, all charged there), plus for TPROXY
          the nftables objects (charged to the cgroup `nft` ran in) and for the
          dispatcher the BPF maps (fdinfo memlock, the kernel's own accounting)
  latency connect + 1 byte each way + close from the client namespace to a
          random port in 1-65535, one connection at a time; median and p99 over
          several interleaved rounds
"""

import contextlib
import json
import os
import re
import struct
import subprocess
import time

import common as c

ALTS = ['sockets', 'tproxy', 'dispatcher', 'one port']
SUBNET = {'sockets': 1, 'tproxy': 2, 'dispatcher': 3, 'one port': 4}
SERVICE_PORT = 7000

NFT_RULESET = '''
table ip bpfsteer_bench {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        ip daddr %(addr)s tcp dport 1-65535 tproxy to :%(port)d meta mark set 1 accept
    }
}
'''


def veth(client_ns, server_ns, n):
    a, b = 'bbc%d' % n, 'bbs%d' % n
    subprocess.run(['ip', 'link', 'add', a, 'netns', client_ns.name, 'type', 'veth', 'peer', 'name', b,
                    'netns', server_ns.name], check=True)
    client_ns.ip('addr', 'add', '198.18.%d.2/24' % n, 'dev', a)
    client_ns.ip('link', 'set', a, 'up')
    server_ns.ip('addr', 'add', '198.18.%d.1/24' % n, 'dev', b)
    server_ns.ip('link', 'set', b, 'up')
    return '198.18.%d.1' % n


def start_server(stack, ns, cg, argv):
    """Start loadgen in ``ns`` inside memory cgroup ``cg``; (popen, ready fields, wall seconds)."""
    t0 = time.perf_counter()
    p = c.start(stack, subprocess.Popen(c.cgroup_exec_prefix(cg) + ns.exec_args(argv), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    line = p.stdout.readline().split()
    wall = time.perf_counter() - t0
    if not line or line[0] != 'ready':
        raise RuntimeError('server did not start: %s' % p.stderr.read())
    return p, line, wall


def settle_usage(cg, seconds=1.0):
    time.sleep(seconds)
    return cg.usage()


def _memlock(fd):
    with open('/proc/self/fdinfo/%d' % fd.fd) as f:
        m = re.search(r'memlock:\s+(\d+)', f.read())
    return int(m.group(1)) if m else 0


def maps_memlock(pin):
    """Sum of the kernel's memory accounting (fdinfo memlock) of every pinned map and of the
    bindings tables and tries, which are inner maps of the pinned 'bindings' and 'tries'."""
    total, per = 0, {}
    for name in os.listdir(pin):
        if name == 'link':
            continue
        with c.bpf.obj_get(os.path.join(pin, name)) as fd:
            per[name] = _memlock(fd)
            if name in ('bindings', 'tries'):
                for slot in (0, 1):
                    raw = c.bpf.map_lookup(fd, struct.pack('=I', slot), 4)
                    if raw is not None:
                        with c.bpf.map_get_fd_by_id(struct.unpack('=I', raw)[0]) as inner:
                            per['%s[%d]' % (name, slot)] = _memlock(inner)
    total = sum(per.values())
    return total, per


def latency(client_ns, addr, ports, count):
    proc = client_ns.run([c.LOADGEN, 'client', 'tcp', addr, ports, '-t', '1', '-n', str(count), '-s', '60'],
                         timeout=120)
    if proc.returncode != 0:
        raise RuntimeError('client failed: %s' % proc.stderr)
    return json.loads(proc.stdout)


def run(quick=False):
    rounds = 2 if quick else 5
    count = 500 if quick else 3000
    out = {'rounds': rounds, 'connections_per_round': count, 'alternatives': {}}
    with contextlib.ExitStack() as stack:
        client = c.namespace(stack)
        servers = dict((a, c.namespace(stack)) for a in ALTS)
        addr = dict((a, veth(client, servers[a], SUBNET[a])) for a in ALTS)
        res = dict((a, {}) for a in ALTS)

        # -- one listening socket per port. This machine caps RLIMIT_NOFILE at
        # 20,000 (no CAP_SYS_RESOURCE), so four processes hold 16,384 ports
        # each, as a pre-forked server would; they start in parallel.
        cg = c.memcg(stack, 'sockets')
        c.log('alternatives: opening 65,535 listening sockets')
        t0 = time.perf_counter()
        procs = []
        for lo in range(1, 65536, 16384):
            hi = min(lo + 16383, 65535)
            argv = [c.LOADGEN, 'server', 'tcp-range', addr['sockets'], str(lo), str(hi)]
            procs.append(c.start(stack, subprocess.Popen(c.cgroup_exec_prefix(cg) + servers['sockets'].exec_args(argv),
                                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        in_process = 0.0
        for p in procs:
            line = p.stdout.readline().split()
            if not line or line[0] != 'ready':
                raise RuntimeError('server did not start: %s' % p.stderr.read())
            in_process += int(line[3]) / 1e6
        wall = time.perf_counter() - t0
        res['sockets'].update(setup_s=wall, setup_detail={
            'socket+bind+listen x 65,535, summed over the 4 processes': in_process}, memory_bytes=settle_usage(cg),
            sockets=65535, processes=4)

        # -- reference: one plain listener, one port
        cg = c.memcg(stack, 'oneport')
        _p, line, wall = start_server(stack, servers['one port'], cg,
                                      [c.LOADGEN, 'server', 'tcp', addr['one port'], str(SERVICE_PORT)])
        res['one port'].update(setup_s=wall, memory_bytes=settle_usage(cg), sockets=1)

        # -- TPROXY
        ns = servers['tproxy']
        cg_rules = c.memcg(stack, 'nft')
        c.log('alternatives: TPROXY rule set')
        with c.stopwatch() as t:
            ruleset = NFT_RULESET % {'addr': addr['tproxy'], 'port': SERVICE_PORT}
            proc = subprocess.run(c.cgroup_exec_prefix(cg_rules) + ns.exec_args(["nft", "-f", "-"]), input=ruleset,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError('nft failed: %s' % proc.stderr)
            ns.ip('rule', 'add', 'fwmark', '1', 'lookup', '100')
            ns.ip('route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '100')
        rules_s = t['s']
        cg = c.memcg(stack, 'tproxy')
        _p, line, wall = start_server(stack, ns, cg, [c.LOADGEN, 'server', 'tcp', '0.0.0.0', str(SERVICE_PORT), '-T'])
        res['tproxy'].update(setup_s=rules_s + wall,
                             setup_detail={'nft -f + ip rule + ip route': rules_s, 'start the server': wall},
                             memory_bytes=settle_usage(cg), config_memory_bytes=cg_rules.usage(), sockets=1)

        # -- dispatcher
        ns = servers['dispatcher']
        fs = c.bpffs(stack)
        target = {'instance': 'b3', 'bpffs': fs, 'netns': ns.path}
        cg = c.memcg(stack, 'dispatcher')
        c.log('alternatives: dispatcher')
        p, line, wall = start_server(stack, ns, cg, [c.LOADGEN, 'server', 'tcp', '127.0.0.1', str(SERVICE_PORT)])
        load_wall, _out = c.load_program(target)
        inst = {'instance': 'b3', 'bpffs': fs}
        steer_wall, _res = c.playbook([
            c.harness.module_task('sk_lookup_binding', dict(inst, label='all', protocol='tcp',
                                                            prefix=addr['dispatcher'] + '/32', port=0)),
            c.harness.module_task('sk_lookup_socket', dict(inst, label='all', pid=p.pid, fd=int(line[2]))),
        ])
        # the same two steps without Ansible: what the kernel work costs
        pin = c.pin_dir(target)
        with c.stopwatch() as t:
            with c.dsp.open_dispatcher(pin) as d:
                d.replace_bindings(c.bnd.parse_bindings([{'label': 'all2', 'protocol': 'tcp',
                                                          'prefix': addr['dispatcher'] + '/32', 'port': 0}]))
                d.replace_bindings(c.bnd.parse_bindings([{'label': 'all', 'protocol': 'tcp',
                                                          'prefix': addr['dispatcher'] + '/32', 'port': 0}]))
        kernel_s = t['s'] / 2     # includes FLIP_GRACE_SECONDS (50 ms) per replacement
        memlock, per_map = maps_memlock(pin)
        res['dispatcher'].update(
            setup_s=load_wall + steer_wall + wall,
            setup_detail={'sk_lookup_program (compile, load, attach; Ansible)': load_wall,
                          'sk_lookup_binding + sk_lookup_socket (Ansible, one playbook)': steer_wall,
                          'start the server': wall,
                          'one binding replacement without Ansible (incl. 50 ms flip grace)': kernel_s},
            memory_bytes=settle_usage(cg), config_memory_bytes=memlock, config_memory_detail=per_map, sockets=1)

        # -- latency, interleaved rounds
        ports = {'sockets': '1-65535', 'tproxy': '1-65535', 'dispatcher': '1-65535', 'one port': str(SERVICE_PORT)}
        raw = dict((a, []) for a in ALTS)
        for a in ALTS:                       # warm-up (ARP, caches)
            latency(client, addr[a], ports[a], 200)
        c.log('alternatives: latency, %d rounds' % rounds)
        for r in range(rounds):
            order = ALTS[r % len(ALTS):] + ALTS[:r % len(ALTS)]
            for a in order:
                raw[a].append(latency(client, addr[a], ports[a], count))
        for a in ALTS:
            res[a]['latency'] = {'p50_us': c.median([x['p50_us'] for x in raw[a]]),
                                 'p99_us': c.median([x['p99_us'] for x in raw[a]]),
                                 'rate': c.median([x['rate'] for x in raw[a]]),
                                 'errors': sum(x['errors'] for x in raw[a]), 'raw': raw[a]}
            c.log('alternatives: %-10s setup %.2f s, memory %.1f MiB (+%.2f MiB config), p50 %.0f us, p99 %.0f us'
                  % (a, res[a]['setup_s'], res[a]['memory_bytes'] / 2**20,
                     res[a].get('config_memory_bytes', 0) / 2**20, res[a]['latency']['p50_us'],
                     res[a]['latency']['p99_us']))
        with c.dsp.open_dispatcher(pin) as d:
            out['dispatcher_metrics'] = [x for x in d.destinations() if x['label'] == 'all']
    out['alternatives'] = res
    return out


if __name__ == '__main__':
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
