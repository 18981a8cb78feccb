"""6. Fleet: converge and no-op rerun of playbooks/site.yml over a simulated fleet.

Each host is a network namespace with its own dispatcher instance
(ansible_connection: local, per-host dispatcher_netns / dispatcher_instance,
one shared private bpffs), the documented role variables only:
  dispatcher_bindings  10 bindings per host (tcp 80/443/8080 and udp 53 on a
                       /32 and a /24, two labels)
  dispatcher_sockets   one running TCP server per host, registered by pid + fd
  dispatcher_install_dependencies: false (the packages are there; an apt run
                       per host would measure apt, not the collection)
Hosts are in group `dispatchers` (site.yml's default target). Ansible runs
with its default 5 forks; the 50-host fleet also with 10.

  converge  first run: render, compile and load a program per host, apply the
            bindings, register the socket
  no-op     the same again: nothing may change (checked from the recap)
"""

import contextlib
import json
import os
import subprocess
import tempfile

import yaml

import common as c

SITE = os.path.join(c.ROOT, 'playbooks', 'site.yml')


def bindings_for(i):
    net = '198.18.%d' % (i % 250)
    return [
        {'label': 'web', 'protocol': 'tcp', 'prefix': '%s.0/24' % net, 'port': 80},
        {'label': 'web', 'protocol': 'tcp', 'prefix': '%s.0/24' % net, 'port': 443},
        {'label': 'web', 'protocol': 'tcp', 'prefix': '%s.10/32' % net, 'port': 8080},
        {'label': 'web', 'protocol': 'tcp', 'prefix': '2001:2:0:%x::/64' % i, 'port': 443},
        {'label': 'dns', 'protocol': 'udp', 'prefix': '%s.0/24' % net, 'port': 53},
        {'label': 'dns', 'protocol': 'udp', 'prefix': '%s.53/32' % net, 'port': 53},
        {'label': 'dns', 'protocol': 'udp', 'prefix': '2001:2:0:%x::/64' % i, 'port': 53},
        {'label': 'dns', 'protocol': 'tcp', 'prefix': '%s.0/24' % net, 'port': 53},
        {'label': 'web', 'protocol': 'tcp', 'prefix': '%s.0/24' % net, 'port': 0},
        {'label': 'dns', 'protocol': 'udp', 'prefix': '%s.54/32' % net, 'port': 0},
    ]


def build(stack, hosts, tmp):
    fs = c.bpffs(stack)
    inventory = {'all': {'vars': {'ansible_connection': 'local',
                                  'ansible_python_interpreter': c.harness.HOST_PYTHON,
                                  'ansible_become': False,     # we are root already; no sudo here
                                  'dispatcher_bpffs': fs,
                                  'dispatcher_install_dependencies': False},
                         'children': {'dispatchers': {'hosts': {}}}}}
    group = inventory['all']['children']['dispatchers']['hosts']
    for i in range(hosts):
        ns = c.namespace(stack)
        p = c.start(stack, ns.popen([c.LOADGEN, 'server', 'tcp', '127.0.0.1', '8080'],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        line = p.stdout.readline().split()
        if not line or line[0] != 'ready':
            raise RuntimeError('server did not start: %s' % p.stderr.read())
        group['host-%03d' % i] = {'dispatcher_instance': 'h%03d' % i, 'dispatcher_netns': ns.path,
                                  'dispatcher_bindings': bindings_for(i),
                                  'dispatcher_sockets': [{'label': 'web', 'pid': p.pid, 'fd': int(line[2])}]}
    path = os.path.join(tmp, 'inventory-%d.yml' % hosts)
    with open(path, 'w') as f:
        yaml.safe_dump(inventory, f)
    return path, fs


def recap(res):
    stats = res.raw.get('stats', {})
    return {'hosts': len(stats), 'changed': sum(1 for s in stats.values() if s.get('changed')),
            'failed': sum(1 for s in stats.values() if s.get('failures') or s.get('unreachable'))}


def run(quick=False):
    # (hosts, forks): Ansible's default 5 forks, and 10 for the larger fleet
    runs = [(3, 5)] if quick else [(12, 5), (50, 5), (50, 10)]
    if not os.path.exists(SITE) or not os.path.isdir(os.path.join(c.ROOT, 'roles', 'dispatcher', 'tasks')):
        return {'skipped': 'playbooks/site.yml or roles/dispatcher does not exist yet'}
    rows = []
    for hosts, forks in runs:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='bpfsteer-bench-b6-'))
            c.log('fleet: %d hosts, %d forks: building the namespaces' % (hosts, forks))
            inv, _fs = build(stack, hosts, tmp)
            args = ('-f', str(forks))
            wall, res = c.playbook(SITE, inventory=inv, args=args, timeout=1800)
            conv = recap(res)
            assert conv['changed'] == hosts and conv['failed'] == 0, conv
            noop = []
            for _ in range(1 if quick or hosts > 12 else 2):
                w, r = c.playbook(SITE, inventory=inv, args=args, timeout=1800)
                rc = recap(r)
                assert rc['changed'] == 0 and rc['failed'] == 0, rc
                noop.append(w)
            rows.append({'hosts': hosts, 'forks': forks, 'converge_s': wall, 'noop_s': c.median(noop),
                         'noop_runs': len(noop), 'converge_per_host_s': wall / hosts,
                         'noop_per_host_s': c.median(noop) / hosts})
            c.log('fleet: %d hosts, %d forks: converge %.1f s, no-op %.1f s' % (
                hosts, forks, wall, c.median(noop)))
    return {'rows': rows}


if __name__ == '__main__':
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
