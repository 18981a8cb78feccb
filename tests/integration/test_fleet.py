"""A simulated fleet: 12 hosts, each its own network namespace and dispatcher instance, in two
groups whose variables differ. Converge, prove traffic per host, rerun without change, inject
drift by hand on two hosts, find exactly those two with audit.yml and --check --diff, repair."""

import json
import os
import shutil
import subprocess
import tempfile

import pytest
import yaml

import harness
from harness import Server, run_playbook

SITE = os.path.join(harness.ROOT, 'playbooks', 'site.yml')
AUDIT = os.path.join(harness.ROOT, 'playbooks', 'audit.yml')
EDGE = ['edge-%02d' % i for i in range(1, 7)]
DNS = ['dns-%02d' % i for i in range(1, 7)]

GROUP_VARS = {
    'edge': {
        'dispatcher_missing_socket': 'drop',
        'dispatcher_bindings': [
            {'label': 'web', 'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 80},
            {'label': 'web', 'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 443},
        ],
    },
    'dns': {
        'dispatcher_missing_socket': 'pass',
        'dispatcher_protected': [{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22},
                                 {'protocol': 'udp', 'prefix': '127.0.0.9/32', 'port': 53}],
        'dispatcher_bindings': [
            {'label': 'dns', 'protocol': 'udp', 'prefix': '127.0.0.0/8', 'port': 53},
            {'label': 'dns', 'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 53},
        ],
    },
}


class Fleet(object):
    def __init__(self, hosts=EDGE + DNS):
        self.tmp = tempfile.mkdtemp(prefix='bpfsteer-fleet-')
        self.bpffs = os.path.join(self.tmp, 'bpf')
        self.namespaces = {}
        self.servers = {}
        self.hosts = hosts
        inventory = {'all': {'vars': {'ansible_connection': 'local',
                                      'ansible_python_interpreter': harness.HOST_PYTHON,
                                      'dispatcher_bpffs': self.bpffs,
                                      'dispatcher_install_dependencies': False},
                             'children': {'fleet': {'children': {}}}}}
        groups = inventory['all']['children']['fleet']['children']
        try:
            for host in hosts:
                group = host.split('-')[0]
                ns = harness.Namespace('bpfsteer-f')
                self.namespaces[host] = ns
                pidfile = os.path.join(self.tmp, '%s.pid' % host)
                if group == 'edge':
                    server = Server(ns, host, 'tcp', '127.0.0.1', 8080)
                    sockets = [{'label': 'web', 'pidfile': pidfile, 'protocol': 'tcp',
                                'address': '127.0.0.1', 'port': 8080}]
                else:
                    server = Server(ns, host, 'udp', '127.0.0.1', 5353)
                    sockets = [{'label': 'dns', 'pidfile': pidfile, 'protocol': 'udp',
                                'address': '127.0.0.1', 'port': 5353}]
                with open(pidfile, 'w') as f:
                    f.write('%d\n' % server.pid)
                self.servers[host] = server
                groups.setdefault(group, {'vars': GROUP_VARS[group], 'hosts': {}})
                groups[group]['hosts'][host] = {'dispatcher_instance': host.replace('-', '_'),
                                                'dispatcher_netns': ns.path,
                                                'dispatcher_sockets': sockets}
            self.inventory = os.path.join(self.tmp, 'inventory.yml')
            with open(self.inventory, 'w') as f:
                yaml.safe_dump(inventory, f)
        except Exception:
            self.destroy()
            raise

    def pin_dir(self, host):
        return os.path.join(self.bpffs, 'sk_lookup', host.replace('-', '_'))

    def run(self, playbook, **kw):
        kw.setdefault('args', [])
        kw['args'] = list(kw['args']) + ['-f', '12', '-e', 'target=fleet']
        return run_playbook(playbook, inventory=self.inventory, **kw)

    def destroy(self):
        for server in self.servers.values():
            server.stop()
        for ns in self.namespaces.values():
            ns.delete()
        if os.path.ismount(self.bpffs):
            subprocess.run(['umount', self.bpffs], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope='module')
def fleet():
    f = Fleet()
    try:
        yield f
    finally:
        f.destroy()


def changed_hosts(result):
    return sorted(h for h, s in result.raw['stats'].items() if s['changed'])


def audit_summary(result):
    for task in result.tasks:
        for out in task['hosts'].values():
            summary = out.get('ansible_facts', {}).get('audit_summary')
            if summary:
                return summary
    raise AssertionError('audit.yml recorded no summary')


def drift_of(result, host):
    for task in result.tasks:
        out = task['hosts'].get(host, {})
        if 'audit_drift' in out.get('ansible_facts', {}):
            return out['ansible_facts']['audit_drift']
    raise AssertionError('no drift recorded for %s' % host)


def traffic(fleet):
    answers = {}
    for host in fleet.hosts:
        ns = fleet.namespaces[host]
        if host.startswith('edge'):
            got = harness.probe_many(ns, [('tcp', '127.0.0.1', 80), ('tcp', '127.0.0.3', 443),
                                          ('tcp', '127.0.0.1', 8443)])
            answers[host] = sorted(set(got.values()))
        else:
            got = harness.probe_many(ns, [('udp', '127.0.0.1', 53), ('udp', '127.0.0.200', 53)])
            answers[host] = sorted(set(got.values()))
    return answers


def expected_traffic(fleet):
    # edge: 80 and 443 reach the host's own web server; 8443 is unbound -> refused
    # dns: port 53 on any 127/8 address reaches the host's own DNS server
    return dict((h, sorted([h, 'refused']) if h.startswith('edge') else [h]) for h in fleet.hosts)


def test_fleet_converges_drifts_and_repairs(fleet):
    first = fleet.run(SITE, expect_rc=0)
    assert changed_hosts(first) == sorted(fleet.hosts)
    assert traffic(fleet) == expected_traffic(fleet)

    # the C differs per group and is the same within a group
    shas = {}
    for host in fleet.hosts:
        loaded = [t['hosts'][host] for t in first.tasks
                  if t['task']['name'].endswith('Load or upgrade the dispatch program') and host in t['hosts']]
        shas[host] = loaded[0]['program']['source_sha256']
    assert len(set(shas[h] for h in EDGE)) == 1 and len(set(shas[h] for h in DNS)) == 1
    assert shas[EDGE[0]] != shas[DNS[0]]

    second = fleet.run(SITE, expect_rc=0)
    assert changed_hosts(second) == []

    clean = fleet.run(AUDIT, expect_rc=0)
    assert sorted(audit_summary(clean)['in_sync']) == sorted(fleet.hosts)

    # drift by hand: a binding deleted with bpftool on edge-02, a socket unregistered on dns-03
    import sys
    sys.path.insert(0, harness.COLLECTIONS)
    from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd
    info = harness.run_module('sk_lookup_info', {'instance': 'edge_02', 'bpffs': fleet.bpffs})
    key = bnd.encode_key('tcp', bnd.parse_prefix('127.0.0.0/8'), 443)
    # the tables are inner maps of the pinned 'bindings' array: find the active one's id first
    slot = [str(b) for b in info['program']['active_table'].to_bytes(4, 'little')]
    found = subprocess.run(['bpftool', '-j', 'map', 'lookup', 'pinned',
                            os.path.join(fleet.pin_dir('edge-02'), 'bindings'), 'key'] + slot,
                           check=True, capture_output=True, text=True)
    table_id = int.from_bytes(bytes(int(b, 16) for b in json.loads(found.stdout)['value']), 'little')
    subprocess.run(['bpftool', 'map', 'delete', 'id', str(table_id), 'key', 'hex'] + ['%02x' % c for c in key],
                   check=True)
    info = harness.run_module('sk_lookup_info', {'instance': 'dns_03', 'bpffs': fleet.bpffs})
    [dest] = [d for d in info['destinations'] if d['label'] == 'dns' and d['protocol'] == 'udp']
    sockets = os.path.join(fleet.pin_dir('dns-03'), 'sockets')
    subprocess.run(['bpftool', 'map', 'delete', 'pinned', sockets, 'key'] +
                   [str(b) for b in dest['id'].to_bytes(4, 'little')], check=True)

    audit = fleet.run(AUDIT, expect_rc=0)
    summary = audit_summary(audit)
    assert sorted(summary['drifted']) == ['dns-03', 'edge-02']
    assert sorted(summary['in_sync']) == sorted(set(fleet.hosts) - {'dns-03', 'edge-02'})
    assert summary['unreachable'] == [] and summary['without_dispatcher'] == []
    assert drift_of(audit, 'edge-02')['problems'] == ['missing binding tcp 127.0.0.0/8:443 -> web']
    assert drift_of(audit, 'dns-03')['problems'] == ['no socket registered for dns ipv4 udp']

    check = fleet.run(SITE, args=['--check', '--diff'], expect_rc=0)
    assert changed_hosts(check) == ['dns-03', 'edge-02']
    binding_diff = [t['hosts']['edge-02'] for t in check.tasks
                    if t['task']['name'].endswith('Apply the bindings (the whole set)')][0]['diff']
    assert binding_diff['before'] == '' and binding_diff['after'] == 'tcp 127.0.0.0/8:443 -> web\n'
    # check mode changed nothing
    assert drift_of(fleet.run(AUDIT, expect_rc=0), 'edge-02')['in_sync'] is False

    repair = fleet.run(SITE, expect_rc=0)
    assert changed_hosts(repair) == ['dns-03', 'edge-02']
    assert sorted(audit_summary(fleet.run(AUDIT, expect_rc=0))['in_sync']) == sorted(fleet.hosts)
    assert traffic(fleet) == expected_traffic(fleet)


def test_audit_reports_hosts_without_dispatcher_and_unreachable(tmp_path):
    inventory = tmp_path / 'inventory.yml'
    bpffs = str(tmp_path / 'bpf')
    inventory.write_text(yaml.safe_dump({'all': {'children': {'fleet': {'hosts': {
        'bare': {'ansible_connection': 'local', 'ansible_python_interpreter': harness.HOST_PYTHON,
                 'dispatcher_instance': 'bare', 'dispatcher_bpffs': bpffs},
        'gone': {'ansible_host': '127.0.0.1', 'ansible_connection': 'ssh', 'ansible_port': 1,
                 'ansible_ssh_common_args': '-o ConnectTimeout=1'},
    }}}}}))
    res = run_playbook(AUDIT, inventory=str(inventory), args=['-e', 'target=fleet'])
    summary = audit_summary(res)
    assert summary == {'in_sync': [], 'drifted': [], 'unreachable': ['gone'], 'without_dispatcher': ['bare']}
