"""The built collection carries bpf/, the role and the playbooks, and its demo runs installed."""

import os
import subprocess
import tarfile
import uuid

import harness


def galaxy(*args, cwd=None, collections_path=None):
    # A fresh collections path only: with the checkout's path configured, galaxy would call the
    # collection already installed and install nothing.
    env = harness.ansible_env({'ANSIBLE_STDOUT_CALLBACK': 'default',
                               'ANSIBLE_COLLECTIONS_PATH': collections_path or '/nonexistent'})
    proc = subprocess.run([os.path.join(harness.VENV_BIN, 'ansible-galaxy')] + list(args), cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_build_install_and_run_the_demo_from_the_installed_copy(tmp_path):
    galaxy('collection', 'build', '--output-path', str(tmp_path), cwd=harness.ROOT)
    [tarball] = [p for p in os.listdir(tmp_path) if p.endswith('.tar.gz')]
    assert tarball == 'bpfsteer-sk_lookup-1.0.0.tar.gz'
    with tarfile.open(tmp_path / tarball) as tar:
        names = set(tar.getnames())
    for needed in ('bpf/dispatch.c.j2', 'roles/dispatcher/tasks/main.yml', 'roles/dispatcher/meta/argument_specs.yml',
                   'playbooks/demo.yml', 'playbooks/site.yml', 'playbooks/audit.yml', 'playbooks/switch_service.yml',
                   'plugins/modules/sk_lookup_binding.py', 'plugins/module_utils/dispatcher.py', 'README.md'):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(('.venv', '.build', '.git/'))]

    installed = tmp_path / 'collections'
    galaxy('collection', 'install', str(tmp_path / tarball), '-p', str(installed), collections_path=str(installed))
    root = installed / 'ansible_collections' / 'bpfsteer' / 'sk_lookup'
    assert (root / 'bpf' / 'dispatch.c.j2').is_file()

    suffix = uuid.uuid4().hex[:6]
    extra = ['-e', 'demo_netns=bpfsteer-pkg-%s' % suffix, '-e', 'demo_workdir=/run/bpfsteer-pkg-%s' % suffix,
             '-e', 'dispatcher_instance=pkg_%s' % suffix, '-e', 'dispatcher_bpffs=%s' % (tmp_path / 'bpf'),
             '-e', 'dispatcher_install_dependencies=false']
    env = harness.ansible_env({'ANSIBLE_COLLECTIONS_PATH': str(installed), 'ANSIBLE_STDOUT_CALLBACK': 'default'})

    def demo(*args):
        argv = [os.path.join(harness.VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                '-e', 'ansible_python_interpreter=/usr/bin/python3', 'bpfsteer.sk_lookup.demo']
        return subprocess.run(argv + extra + list(args), env=env, capture_output=True, text=True,
                              cwd=str(tmp_path), check=False)
    try:
        run = demo()
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert 'open ports 1-1000 in bpfsteer-pkg-%s: 7, 77, 777 (the server listens on 7777)' % suffix in run.stdout
        assert "echoes: ['hello on port 7', 'hello on port 77', 'hello on port 777']" in run.stdout
        # the role's tasks that ran are the installed copy's (include lines print their path)
        assert 'included: %s for localhost' % (root / 'roles' / 'dispatcher' / 'tasks' / 'present.yml') in run.stdout
    finally:
        clean = demo('-e', 'demo_state=absent')
        subprocess.run(['umount', str(tmp_path / 'bpf')], capture_output=True, check=False)
    assert clean.returncode == 0, clean.stdout[-3000:]
    namespaces = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=False).stdout
    assert 'bpfsteer-pkg-%s' % suffix not in namespaces
