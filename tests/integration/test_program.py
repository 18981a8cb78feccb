"""sk_lookup_program and sk_lookup_info against a real kernel, in throwaway namespaces."""

import json
import os
import subprocess
import tempfile

import harness
from harness import run_module, run_playbook, play, module_task, Server, probe, pin_dir


def test_four_steps_check_load_repeat(target, source):
    args = dict(target, content=source)
    check = run_module('sk_lookup_program', args, check=True, diff=True)
    assert check['changed'] and check['action'] == 'load'
    assert check['diff']['before']['loaded'] is False
    assert check['diff']['after']['source_sha256'] == check['program']['source_sha256']
    assert not os.path.exists(pin_dir(target)), 'check mode pinned something'

    real = run_module('sk_lookup_program', args, diff=True)
    assert real['changed'] and real['action'] == 'load' and real['compiled']
    assert real['program']['attached'] and real['program']['program_id'] > 0
    assert real['program']['netns_inode'] == os.stat(target['netns']).st_ino
    # check mode verified the same program the real run loaded
    assert check['diff']['after']['program_tag'] == real['program']['program_tag']
    assert sorted(os.listdir(pin_dir(target))) == sorted(
        ['link', 'bindings', 'tries', 'prefix_lengths', 'active_table', 'sockets', 'metrics', 'destinations',
         'meta', 'protected'])

    again = run_module('sk_lookup_program', args, diff=True)
    assert not again['changed'] and again['action'] == 'none' and not again['compiled']
    assert again['diff']['before'] == again['diff']['after'] == real['program']

    again_check = run_module('sk_lookup_program', args, check=True)
    assert not again_check['changed'] and again_check['program'] == real['program']


def test_unchanged_rerun_does_not_compile(loaded, source, tmp_path):
    # A bcc that cannot be imported: any attempt to compile would fail the task.
    fake = tmp_path / 'nobcc' / 'bcc'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("compiling is not allowed in this test")\n')
    task = module_task('sk_lookup_program', dict(loaded, content=source),
                       environment={'PYTHONPATH': str(fake.parent)}, ignore_errors=True)
    out = run_playbook(play([task])).result(0)
    assert not out.get('failed'), out.get('msg')
    assert out['changed'] is False and out['compiled'] is False
    # and the same guard does fail when a compile is needed (the guard works)
    changed = source + '\n/* another revision */\n'
    task = module_task('sk_lookup_program', dict(loaded, content=changed),
                       environment={'PYTHONPATH': str(fake.parent)}, ignore_errors=True)
    out = run_playbook(play([task])).result(0)
    assert out.get('failed') and 'bcc' in out['msg']


def test_src_from_template_and_info(target, ns):
    # The path an operator uses: template the C on the host, then load it from src.
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(tmp, 'dispatch.c')
        tasks = [
            {'name': 'render', 'ansible.builtin.template': {'src': harness.TEMPLATE, 'dest': dest, 'mode': '0644'},
             'vars': {'missing_socket': 'pass', 'max_bindings': 5000, 'max_destinations': 64,
                      'protected': [{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22},
                                    {'protocol': 'udp', 'prefix': '2001:db8::/32', 'port': 0}]}},
            module_task('sk_lookup_program', dict(target, src=dest), name='load'),
            module_task('sk_lookup_info', {'instance': target['instance'], 'bpffs': target['bpffs']}, name='info'),
        ]
        res = run_playbook(play(tasks), expect_rc=0)
    info = res.by_name('info')
    assert info['changed'] is False and info['loaded'] is True
    prog = info['program']
    assert prog['missing_socket'] == 'pass'
    assert prog['max_bindings'] == 5000 and prog['max_destinations'] == 64
    assert prog['netns_inode'] == os.stat(ns.path).st_ino and prog['attached']
    assert prog['id'] == res.by_name('load')['program']['program_id']
    assert prog['source_sha256'] == res.by_name('load')['program']['source_sha256']
    assert info['protected'] == [{'protocol': 'tcp', 'prefix': '0.0.0.0/0', 'port': 22},
                                 {'protocol': 'udp', 'prefix': '2001:db8::/32', 'port': 0}]
    assert info['bindings'] == [] and info['destinations'] == []


def test_info_when_nothing_is_loaded(bpffs):
    out = run_module('sk_lookup_info', {'instance': 'nothing', 'bpffs': bpffs}, check=True)
    assert out['loaded'] is False and out['program'] is None and out['bindings'] == []
    assert not os.path.ismount(bpffs), 'the info module mounted a filesystem'


def test_steering_with_maps_filled_by_the_test(loaded, ns):
    with Server(ns, 'echo', port=7777, register=(pin_dir(loaded), 'echo')) as server:
        harness.set_bindings(pin_dir(loaded), [
            {'label': 'echo', 'protocol': 'tcp', 'prefix': '127.0.0.1', 'port': p} for p in (7, 77, 777)])
        answers = harness.probe_many(ns, [('tcp', '127.0.0.1', p) for p in (7, 77, 777, 778, 22)])
        assert answers == {('tcp', '127.0.0.1', 7): 'echo', ('tcp', '127.0.0.1', 77): 'echo',
                           ('tcp', '127.0.0.1', 777): 'echo', ('tcp', '127.0.0.1', 778): 'refused',
                           ('tcp', '127.0.0.1', 22): 'refused'}
        info = run_module('sk_lookup_info', {'instance': loaded['instance'], 'bpffs': loaded['bpffs']})
        [dest] = info['destinations']
        assert dest['label'] == 'echo' and dest['family'] == 'ipv4' and dest['protocol'] == 'tcp'
        assert dest['socket_cookie'] and dest['lookups'] == 3 and dest['misses'] == 0
        assert dest['owner'] == {'address': '127.0.0.1', 'port': 7777, 'pid': server.pid, 'command': 'python3'}


def test_protected_rule_is_never_steered(target, ns):
    source = harness.render_dispatch(protected=[{'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 22}])
    run_module('sk_lookup_program', dict(target, content=source))
    with Server(ns, 'sshd', port=22), Server(ns, 'steal', port=7777, register=(pin_dir(target), 'steal')):
        harness.set_bindings(pin_dir(target), [
            {'label': 'steal', 'protocol': 'tcp', 'prefix': '127.0.0.0/8', 'port': 0}])
        assert probe(ns, 'tcp', '127.0.0.1', 22) == 'sshd'
        assert probe(ns, 'tcp', '127.0.0.1', 23) == 'steal'


def test_upgrade_in_place_refuses_no_connection(loaded, ns, source):
    pins = pin_dir(loaded)
    with Server(ns, 'echo', port=7777, register=(pins, 'echo')):
        harness.set_bindings(pins, [{'label': 'echo', 'protocol': 'tcp', 'prefix': '127.0.0.1', 'port': 80}])
        before = run_module('sk_lookup_info', {'instance': loaded['instance'], 'bpffs': loaded['bpffs']})
        client = harness.ClientLoop(ns, '127.0.0.1', 80, seconds=6)
        upgraded = []
        for revision in range(3):
            new = harness.render_dispatch(missing_socket='drop', protected=[]) + '\n/* revision %d */\n' % revision
            out = run_module('sk_lookup_program', dict(loaded, content=new), diff=True)
            assert out['changed'] and out['action'] == 'upgrade'
            upgraded.append(out)
        counts = client.result()
        after = run_module('sk_lookup_info', {'instance': loaded['instance'], 'bpffs': loaded['bpffs']})
    assert counts['refused'] == 0 and counts['other'] == 0, counts
    assert counts['ok'] > 50 and counts['seen'] == {'echo': counts['ok']}
    # new program each time, same link, same bindings and socket
    ids = [before['program']['id']] + [u['program']['program_id'] for u in upgraded]
    assert len(set(ids)) == 4
    assert after['program']['link_id'] == before['program']['link_id']
    assert after['bindings'] == before['bindings']
    assert after['destinations'][0]['socket_cookie'] == before['destinations'][0]['socket_cookie']
    assert upgraded[0]['diff']['before']['program_id'] == before['program']['id']


def test_incompatible_upgrade_changes_nothing(loaded, ns):
    before = run_module('sk_lookup_info', {'instance': loaded['instance'], 'bpffs': loaded['bpffs']})
    bigger = harness.render_dispatch(max_destinations=2048)
    out = run_module('sk_lookup_program', dict(loaded, content=bigger), expect_failure=True)
    assert out['failed']
    assert 'map sockets: max_entries 2048 in the new source, 1024 in the loaded instance' in out['msg']
    assert 'map metrics: max_entries 2048' in out['msg'] and 'Nothing was changed' in out['msg']
    after = run_module('sk_lookup_info', {'instance': loaded['instance'], 'bpffs': loaded['bpffs']})
    assert after['program'] == before['program']
    # check mode says the same
    out = run_module('sk_lookup_program', dict(loaded, content=bigger), check=True, expect_failure=True)
    assert out['failed'] and 'max_entries 2048' in out['msg']


def test_max_bindings_change_and_other_pin_format_are_refused(loaded, source):
    out = run_module('sk_lookup_program', dict(loaded, content=harness.render_dispatch(max_bindings=5000)),
                     expect_failure=True)
    assert 'max_bindings 5000 in the new source, 1000000 in the loaded instance' in out['msg']
    out = run_module('sk_lookup_program', dict(loaded, content=source.replace('bpfsteer:format=2',
                                                                              'bpfsteer:format=3')),
                     expect_failure=True)
    assert 'declares bpfsteer:format=3; this version of the collection loads format 2' in out['msg']
    # an instance pinned by another layout (format 1 here, written into its meta map) is
    # refused by every module with what to do, and state=absent still removes it
    meta = os.path.join(pin_dir(loaded), 'meta')
    raw = subprocess.run(['bpftool', '-j', 'map', 'lookup', 'pinned', meta, 'key', '0', '0', '0', '0'],
                         capture_output=True, text=True, check=True).stdout
    value = [int(b, 16) for b in json.loads(raw)['value']]
    value[32:36] = [1, 0, 0, 0]
    subprocess.run(['bpftool', 'map', 'update', 'pinned', meta, 'key', '0', '0', '0', '0', 'value'] +
                   [str(b) for b in value], check=True)
    base = {'instance': loaded['instance'], 'bpffs': loaded['bpffs']}
    for name, args in (('sk_lookup_info', base), ('sk_lookup_program', dict(loaded, content=source)),
                       ('sk_lookup_binding', dict(base, bindings=[], exclusive=True))):
        out = run_module(name, args, expect_failure=True)
        assert 'pin format 1; this version reads format 2' in out['msg'] and 'state=absent' in out['msg'], name
    out = run_module('sk_lookup_program', dict(loaded, state='absent'))
    assert out['changed'] and not os.path.exists(pin_dir(loaded))


def test_absent_restores_normal_lookup(loaded, ns):
    pins = pin_dir(loaded)
    with Server(ns, 'steered', port=7777, register=(pins, 'x')), Server(ns, 'plain', port=8080):
        harness.set_bindings(pins, [{'label': 'x', 'protocol': 'tcp', 'prefix': '127.0.0.1', 'port': 8080}])
        assert probe(ns, 'tcp', '127.0.0.1', 8080) == 'steered'
        check = run_module('sk_lookup_program', dict(loaded, state='absent'), check=True, diff=True)
        assert check['changed'] and check['action'] == 'remove'
        assert check['diff']['before']['loaded'] and not check['diff']['after']['loaded']
        assert os.path.exists(pins) and probe(ns, 'tcp', '127.0.0.1', 8080) == 'steered'
        out = run_module('sk_lookup_program', dict(loaded, state='absent'))
        assert out['changed'] and not os.path.exists(pins)
        assert probe(ns, 'tcp', '127.0.0.1', 8080) == 'plain'
        links = subprocess.run(['bpftool', 'link', 'show'], capture_output=True, text=True, check=False).stdout
        assert 'netns_ino %d' % os.stat(ns.path).st_ino not in links
        again = run_module('sk_lookup_program', dict(loaded, state='absent'))
        assert not again['changed']
        again = run_module('sk_lookup_program', dict(loaded, state='absent'), check=True)
        assert not again['changed']


def test_reattach_after_namespace_is_gone(target, source):
    first = harness.Namespace()
    try:
        run_module('sk_lookup_program', dict(target, netns=first.path, content=source))
    finally:
        first.delete()
    out = run_module('sk_lookup_program', dict(target, content=source), diff=True)
    assert out['changed'] and out['action'] == 'reattach'
    assert out['diff']['before']['attached'] is False
    assert out['program']['netns_inode'] == os.stat(target['netns']).st_ino
    assert not run_module('sk_lookup_program', dict(target, content=source))['changed']


def test_other_namespace_is_refused(loaded, source):
    other = harness.Namespace()
    try:
        out = run_module('sk_lookup_program', dict(loaded, netns=other.path, content=source),
                         expect_failure=True)
    finally:
        other.delete()
    assert out['failed'] and 'is attached to network namespace inode' in out['msg']


def test_earlier_program_choice_is_respected(ns, bpffs, source):
    first = {'instance': 'first', 'bpffs': bpffs, 'netns': ns.path}
    second = {'instance': 'second', 'bpffs': bpffs, 'netns': ns.path}
    run_module('sk_lookup_program', dict(first, content=source))
    run_module('sk_lookup_program', dict(second, content=source))
    with Server(ns, 'a', port=7001, register=(pin_dir(first), 'svc')), \
            Server(ns, 'b', port=7002, register=(pin_dir(second), 'svc')):
        binding = [{'label': 'svc', 'protocol': 'tcp', 'prefix': '127.0.0.1', 'port': 9000}]
        harness.set_bindings(pin_dir(first), binding)
        harness.set_bindings(pin_dir(second), binding)
        assert probe(ns, 'tcp', '127.0.0.1', 9000) == 'a'
        info = run_module('sk_lookup_info', {'instance': 'second', 'bpffs': bpffs})
        assert info['destinations'][0]['lookups'] == 0
        # the first one gone, the second one steers
        run_module('sk_lookup_program', dict(first, state='absent'))
        assert probe(ns, 'tcp', '127.0.0.1', 9000) == 'b'


def test_concurrent_runs_are_serialised(target, source):
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(3):
            path = os.path.join(tmp, 'p%d.yml' % i)
            import yaml
            with open(path, 'w') as f:
                yaml.safe_dump(play([module_task('sk_lookup_program', dict(target, content=source))]), f)
            inv = os.path.join(tmp, 'inv')
            with open(inv, 'w') as f:
                f.write('localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n')
            procs.append(subprocess.Popen([os.path.join(harness.VENV_BIN, 'ansible-playbook'), path, '-i', inv],
                                          env=harness.ansible_env(), stdout=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    import json
    actions = sorted(json.loads(o[o.index('{'):])['plays'][0]['tasks'][0]['hosts']['localhost']['action']
                     for o in outs)
    assert actions == ['load', 'none', 'none']


# --- errors -------------------------------------------------------------------

def test_error_bpffs_not_mountable(target, source, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    out = run_module('sk_lookup_program', dict(target, bpffs=str(blocker), content=source), expect_failure=True)
    assert 'exists and is not a directory' in out['msg'] and str(blocker) in out['msg']


def test_error_namespace_path(target, source):
    out = run_module('sk_lookup_program', dict(target, netns='/run/netns/does-not-exist', content=source),
                     expect_failure=True)
    assert out['msg'] == 'network namespace /run/netns/does-not-exist: No such file or directory'
    out = run_module('sk_lookup_program', dict(target, netns='/etc/hostname', content=source),
                     expect_failure=True)
    assert '/etc/hostname is not a network namespace file' in out['msg']
    out = run_module('sk_lookup_program', dict(target, netns='/proc/self/ns/uts', content=source),
                     expect_failure=True)
    assert 'not a network namespace' in out['msg']
    assert not os.path.exists(pin_dir(target))


def test_error_compile_shows_compiler_message(target):
    bad = harness.render_dispatch().replace('return SK_PASS;\n}', 'return SK_PASS\n}', 1)
    out = run_module('sk_lookup_program', dict(target, content=bad), expect_failure=True)
    assert 'compiling the dispatch program failed' in out['msg']
    assert "expected ';'" in out['msg']
    assert not os.path.exists(pin_dir(target))


def test_error_not_a_dispatch_program(target):
    src = '#include <uapi/linux/bpf.h>\nint dispatch(struct bpf_sk_lookup *ctx) { return SK_PASS; }\n'
    out = run_module('sk_lookup_program', dict(target, content=src), expect_failure=True)
    assert 'not a bpfsteer dispatch program' in out['msg'] and 'map bindings is not defined' in out['msg']
    assert not os.path.exists(pin_dir(target))


def test_error_verifier_refusal_leaves_nothing(target):
    # A socket reference that is never released: compiles, the verifier says no.
    bad = harness.render_dispatch().replace('bpf_sk_release(sk);', '')
    out = run_module('sk_lookup_program', dict(target, content=bad), expect_failure=True)
    assert 'verifier refused' in out['msg'] and 'Unreleased reference' in out['msg']
    assert not os.path.exists(pin_dir(target))
    leftovers = os.listdir(os.path.join(target['bpffs'], 'sk_lookup')) \
        if os.path.isdir(os.path.join(target['bpffs'], 'sk_lookup')) else []
    assert leftovers == []


def test_error_permission_denied(target, source):
    task = module_task('sk_lookup_program', dict(target, content=source), ignore_errors=True,
                       become=True, become_user='nobody', become_method='su',
                       become_flags='-s /bin/sh')
    out = run_playbook(play([task])).result(0)
    assert out.get('failed') and 'permission denied' in out['msg'], out


def test_error_bad_options(target, source):
    out = run_module('sk_lookup_program', dict(target, instance='a.b', content=source), expect_failure=True)
    assert "instance 'a.b' must be" in out['msg']
    out = run_module('sk_lookup_program', dict(target, src='/nonexistent/dispatch.c'), expect_failure=True)
    assert out['msg'].startswith('cannot read src /nonexistent/dispatch.c')
    out = run_module('sk_lookup_program', dict(target, src='/etc/hostname', content=source), expect_failure=True)
    assert 'mutually exclusive' in out['msg']
