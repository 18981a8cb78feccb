"""The dispatcher role on one namespace host: check mode first, validation, absent."""

import os

import harness
from harness import Server, run_playbook, pin_dir

SITE = os.path.join(harness.ROOT, 'playbooks', 'site.yml')


def inventory(tmp_path, target, **hostvars):
    host = {'ansible_connection': 'local', 'ansible_python_interpreter': harness.HOST_PYTHON,
            'dispatcher_instance': target['instance'], 'dispatcher_bpffs': target['bpffs'],
            'dispatcher_netns': target['netns'], 'dispatcher_install_dependencies': False}
    host.update(hostvars)
    import yaml
    path = tmp_path / 'inventory.yml'
    path.write_text(yaml.safe_dump({'all': {'children': {'dispatchers': {'hosts': {'node': host}}}}}))
    return str(path)


def node(result, name):
    for task in result.tasks:
        if task['task']['name'].endswith(name) and 'node' in task['hosts']:
            return task['hosts']['node']
    raise KeyError(name)


def test_check_mode_on_a_fresh_host_then_converge(tmp_path, target, ns):
    pidfile = tmp_path / 'web.pid'
    with Server(ns, 'web', port=8080) as server:
        pidfile.write_text('%d\n' % server.pid)
        inv = inventory(tmp_path, target,
                        dispatcher_bindings=[{'label': 'web', 'protocol': 'tcp', 'prefix': '127.0.0.1', 'port': 80}],
                        dispatcher_sockets=[{'label': 'web', 'pidfile': str(pidfile), 'protocol': 'tcp',
                                             'port': 8080}])
        check = run_playbook(SITE, inventory=inv, check=True, diff=True, expect_rc=0)
        program = node(check, 'Load or upgrade the dispatch program')
        assert program['changed'] and program['action'] == 'load'
        binding = node(check, 'Apply the bindings (the whole set)')
        assert binding['changed'] and binding['diff']['after'] == 'tcp 127.0.0.1/32:80 -> web\n'
        assert node(check, 'Register the sockets')['skipped']
        assert not os.path.exists(pin_dir(target)) and harness.probe(ns, 'tcp', '127.0.0.1', 80) == 'refused'

        real = run_playbook(SITE, inventory=inv, expect_rc=0)
        assert real.raw['stats']['node']['changed'] >= 3
        assert node(real, 'Apply the bindings (the whole set)')['added'] == [
            {'label': 'web', 'protocol': 'tcp', 'prefix': '127.0.0.1/32', 'port': 80}]
        assert harness.probe(ns, 'tcp', '127.0.0.1', 80) == 'web'
        again = run_playbook(SITE, inventory=inv, expect_rc=0)
        assert again.raw['stats']['node']['changed'] == 0
        again = run_playbook(SITE, inventory=inv, check=True, expect_rc=0)
        assert again.raw['stats']['node']['changed'] == 0
        # counts only: a relabel is still reported as a change, without the lists
        quiet = run_playbook(SITE, inventory=inv, expect_rc=0, args=[
            '-e', 'dispatcher_return_changes=false', '-e', '{"dispatcher_bindings": [{"label": "web2", '
            '"protocol": "tcp", "prefix": "127.0.0.1", "port": 80}]}'])
        applied = node(quiet, 'Apply the bindings (the whole set)')
        assert applied['changed'] and applied['summary'] == {'added': 0, 'removed': 0, 'changed_labels': 1}
        assert 'added' not in applied and 'changed_labels' not in applied

        gone = run_playbook(SITE, inventory=inv, args=['-e', 'dispatcher_state=absent'], expect_rc=0)
        assert node(gone, 'Remove the dispatcher')['changed'] and not os.path.exists(pin_dir(target))
        assert harness.probe(ns, 'tcp', '127.0.0.1', 80) == 'refused'


def test_bad_variables_fail_before_any_change(tmp_path, target):
    cases = [
        ({'dispatcher_bindings': [{'label': 'ok', 'protocol': 'tcp', 'prefix': '10.0.0.1', 'port': 1},
                                  {'label': 'x', 'protocol': 'tcp', 'prefix': '10.0.0.999', 'port': 1}]},
         "bindings[1] prefix '10.0.0.999' is not a valid IPv4 or IPv6 prefix"),
        ({'dispatcher_missing_socket': 'maybe'}, 'dispatcher_missing_socket'),
        ({'dispatcher_protected': [{'protocol': 'tcp', 'prefix': 'nowhere', 'port': 22}]},
         "protected[0] prefix 'nowhere' is not a valid"),
        ({'dispatcher_sockets': [{'label': 'web', 'pid': 1, 'pidfile': '/run/x.pid', 'port': 1,
                                  'protocol': 'tcp'}]},
         'needs a label, exactly one of pid, pidfile or systemd_unit'),
    ]
    for hostvars, message in cases:
        res = run_playbook(SITE, inventory=inventory(tmp_path, target, **hostvars))
        failed = [t['hosts']['node'] for t in res.tasks if t['hosts'].get('node', {}).get('failed')]
        assert res.rc != 0 and failed, hostvars
        assert message in str(failed[0]), (message, failed[0].get('msg'))
        assert not os.path.exists(pin_dir(target))
