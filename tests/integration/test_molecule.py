"""Molecule: the namespace scenario runs for real; the Vagrant scenario is checked for syntax."""

import os
import subprocess

import yaml

import harness

MOLECULE = os.path.join(harness.ROOT, 'molecule')


def test_molecule_default_scenario_passes(tmp_path):
    # Molecule's prerun installs the collection under $HOME/.ansible; keep that copy out of the
    # real home, where it would shadow the checkout for every later ansible run.
    env = harness.ansible_env({'ANSIBLE_STDOUT_CALLBACK': 'default', 'HOME': str(tmp_path)})
    proc = subprocess.run([os.path.join(harness.VENV_BIN, 'molecule'), 'test', '-s', 'default'],
                          cwd=harness.ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'idempotence' in out and 'Executed: Successful' in out
    assert 'bpfsteer-molecule' not in subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                                                     text=True, check=False).stdout


def test_vagrant_scenario_shares_playbooks_and_is_valid(tmp_path):
    with open(os.path.join(MOLECULE, 'vagrant', 'molecule.yml')) as f:
        vagrant = yaml.safe_load(f)
    with open(os.path.join(MOLECULE, 'default', 'molecule.yml')) as f:
        default = yaml.safe_load(f)
    assert vagrant['driver']['name'] == 'vagrant'
    assert sorted(p['box'] for p in vagrant['platforms']) == ['debian/bookworm64', 'generic/ubuntu2204']
    shared = ('prepare', 'converge', 'verify', 'cleanup')
    assert [vagrant['provisioner']['playbooks'][k] for k in shared] == \
        [default['provisioner']['playbooks'][k] for k in shared]
    # syntax-check every playbook with the Vagrant scenario's inventory
    inv = {'all': {'hosts': dict((p['name'], dict(vagrant['provisioner']['inventory']['host_vars'][p['name']],
                                                  ansible_connection='local'))
                                 for p in vagrant['platforms']),
                   'vars': vagrant['provisioner']['inventory']['group_vars']['all']}}
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(yaml.safe_dump(inv))
    for name in sorted(set(vagrant['provisioner']['playbooks'].values())):
        path = os.path.normpath(os.path.join(MOLECULE, 'vagrant', name))
        proc = subprocess.run([os.path.join(harness.VENV_BIN, 'ansible-playbook'), '--syntax-check', '-i',
                               str(inventory), path], env=harness.ansible_env({'ANSIBLE_STDOUT_CALLBACK': 'default'}),
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
