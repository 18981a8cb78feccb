"""4. Control plane: applying bindings with sk_lookup_binding and with the role.

Every figure is the wall time of one `ansible-playbook` run against localhost
(ansible_connection=local), what an operator waits for, plus the task's own
time from the results_json callback (the rest is Ansible's own start-up and play loading).
The desired set comes from a JSON extra-vars file (`-e @wanted.json`), as
group_vars would supply it, and is applied with exclusive: true.

  apply       the set into an empty instance
  no-op       the same set again (nothing changes: the module reads both tables
              and compares)
  change 1    the same set with one binding relabelled

Forms of the bindings option:
  json        bindings: "{{ wanted | to_json }}"   (Ansible templates one string)
  list        bindings: "{{ wanted }}"             (Ansible templates every dict)
What the result carries (RESULTS):
  bindings + changes   return_bindings: true,  return_changes: true
  changes              return_bindings: false, return_changes: true (the lists
                       added, removed, changed_labels: on a first apply `added`
                       is the whole set)
  counts               return_bindings: false, return_changes: false (count and
                       summary only; checked: `summary` there, `added` not)
The role (bpfsteer.sk_lookup.dispatcher) is run with
dispatcher_install_dependencies: false and dispatcher_return_changes true
(changes) or false (counts); it renders the program, checks the kernel, loads
(no-op), applies (json form, return_bindings: false inside the role) and
registers sockets. Its set comes as data (dispatcher_bindings in the vars file)
or through a template string (dispatcher_bindings: "{{ wanted }}").
"backend" is the same work done in-process by Dispatcher.replace_bindings,
without Ansible: the floor.

The set: host prefixes in 198.18.0.0/15 and 2001:2::/48, tcp and udp, ports 80,
443, 8080, 8443, 53 and 0 over 8 labels -- 4 destinations per label.
"""

import contextlib
import json
import os
import socket
import struct
import tempfile

import common as c

PORTS = [80, 443, 8080, 8443, 53, 0]
# result mode -> (return_bindings, return_changes)
RESULTS = {'bindings + changes': (True, True), 'changes': (False, True), 'counts': (False, False)}
LABELS = ['svc%d' % i for i in range(8)]


def wanted_set(n):
    """n distinct bindings, deterministic."""
    out = []
    base4 = struct.unpack('>I', socket.inet_aton('198.18.0.0'))[0]
    for i in range(n):
        proto = 'tcp' if i % 2 == 0 else 'udp'
        host, port = divmod(i // 2, len(PORTS))
        if (i // 2) % 4 == 3:     # a quarter of the hosts are IPv6
            prefix = '2001:2::%x:%x/128' % (host >> 16, host & 0xffff)
        else:
            prefix = socket.inet_ntoa(struct.pack('>I', base4 + host)) + '/32'
        out.append({'label': LABELS[i % len(LABELS)], 'protocol': proto, 'prefix': prefix, 'port': PORTS[port]})
    return out


def module_play(target, form, result):
    expr = '{{ wanted | to_json }}' if form == 'json' else '{{ wanted }}'
    return_bindings, return_changes = RESULTS[result]
    return [{'name': 'bench', 'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'bindings', 'bpfsteer.sk_lookup.sk_lookup_binding': {
            'instance': target['instance'], 'bpffs': target['bpffs'], 'bindings': expr,
            'exclusive': True, 'return_bindings': return_bindings, 'return_changes': return_changes}}]}]


def role_play(target, form='data', result='changes'):
    """form 'data': dispatcher_bindings comes straight from the vars file (as from
    group_vars); 'template': the play sets dispatcher_bindings: "{{ wanted }}"."""
    role_vars = {'dispatcher_instance': target['instance'], 'dispatcher_bpffs': target['bpffs'],
                 'dispatcher_netns': target['netns'], 'dispatcher_install_dependencies': False,
                 'dispatcher_return_changes': RESULTS[result][1]}
    if form == 'template':
        role_vars['dispatcher_bindings'] = '{{ wanted }}'
    return [{'name': 'bench', 'hosts': 'localhost', 'gather_facts': False, 'roles': [
        {'role': 'bpfsteer.sk_lookup.dispatcher', 'vars': role_vars}]}]


def write_vars(tmp, name, entries, key='wanted'):
    path = os.path.join(tmp, '%s-%s.json' % (name, key))
    with open(path, 'w') as f:
        json.dump({key: entries}, f)
    return path


def clear(target):
    with c.dsp.open_dispatcher(c.pin_dir(target)) as d:
        d.replace_bindings({})


def restore(target, vars_path):
    """Put the set of a vars file in place through the backend (untimed)."""
    with open(vars_path) as f:
        entries = list(json.load(f).values())[0]
    with c.dsp.open_dispatcher(c.pin_dir(target)) as d:
        d.replace_bindings(c.bnd.parse_bindings(entries))


def count(target):
    with c.dsp.open_dispatcher(c.pin_dir(target)) as d:
        return len(d.bindings())


def tasks_named(res, task_name):
    """The tasks of a run named task_name (a role's task: ending with it)."""
    return [t for t in res.tasks if t['task']['name'] == task_name or t['task']['name'].endswith(task_name)]


def timed(play, vars_path, task_name):
    """(wall s, task s, size in bytes of the task's JSON result, PlaybookResult)."""
    wall, res = c.playbook(play, args=('-e', '@' + vars_path))
    seconds = size = None
    for task in tasks_named(res, task_name):
        seconds = task['task'].get('seconds')
        size = sum(len(json.dumps(h)) for h in task['hosts'].values())
    return wall, seconds, size, res


# summary the module must return for each case of a set of n bindings
EXPECTED_SUMMARY = {'apply': lambda n: {'added': n, 'removed': 0, 'changed_labels': 0},
                    'no-op': lambda n: {'added': 0, 'removed': 0, 'changed_labels': 0},
                    'change 1': lambda n: {'added': 0, 'removed': 0, 'changed_labels': 1}}


def check_result(res, task_name, result, case, n):
    """The task's result carries what its mode says: the lists only with return_changes,
    `bindings` only with return_bindings, `summary` always, with the counts of the case."""
    return_bindings, return_changes = RESULTS[result]
    hosts = [h for t in tasks_named(res, task_name) for h in t['hosts'].values()]
    assert len(hosts) == 1, hosts
    h = hosts[0]
    assert h.get('changed') == (case != 'no-op'), (case, h.get('changed'))
    for key in ('added', 'removed', 'changed_labels'):
        assert (key in h) == return_changes, (result, key, sorted(h))
    assert ('bindings' in h) == return_bindings, (result, sorted(h))
    assert h.get('summary') == EXPECTED_SUMMARY[case](n), (result, case, h.get('summary'))


def run(quick=False):
    if quick:
        plan = [('module', 'json', 'changes', 1000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                ('module', 'json', 'counts', 1000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                ('module', 'json', 'bindings + changes', 1000, {'apply': 1, 'no-op': 1}),
                ('module', 'list', 'changes', 1000, {'apply': 1}),
                ('role', 'data', 'changes', 1000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                ('role', 'data', 'counts', 1000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                ('role', 'template', 'changes', 1000, {'no-op': 1})]
        backend_sizes = [1000]
    else:
        # about 12 minutes on 2 cores: the rows that show what the lists cost run fewer times
        # than the counts-only rows next to them
        plan = [('module', 'json', 'changes', 1000, {'apply': 3, 'no-op': 3, 'change 1': 3}),
                ('module', 'json', 'counts', 1000, {'apply': 3, 'no-op': 3, 'change 1': 3}),
                ('module', 'json', 'bindings + changes', 1000, {'apply': 3, 'no-op': 3}),
                ('module', 'list', 'changes', 1000, {'apply': 3, 'no-op': 3}),
                ('module', 'json', 'changes', 100000, {'apply': 2, 'no-op': 2, 'change 1': 2}),
                ('module', 'json', 'counts', 100000, {'apply': 3, 'no-op': 3, 'change 1': 3}),
                ('module', 'json', 'bindings + changes', 100000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                # the slow forms and sizes (a minute or more per call) once each
                ('module', 'list', 'changes', 100000, {'apply': 1}),
                ('module', 'json', 'changes', 1000000, {'apply': 1, 'no-op': 1}),
                ('module', 'json', 'counts', 1000000, {'apply': 1, 'no-op': 1}),
                ('role', 'data', 'changes', 1000, {'apply': 2, 'no-op': 2, 'change 1': 2}),
                ('role', 'data', 'changes', 100000, {'apply': 1, 'no-op': 1, 'change 1': 1}),
                ('role', 'data', 'counts', 100000, {'apply': 2, 'no-op': 2, 'change 1': 2}),
                # the role given its set through a template string, as the module's list form
                ('role', 'template', 'changes', 100000, {'no-op': 1})]
        backend_sizes = [100000, 1000000]
    rows = []
    have_role = os.path.isdir(os.path.join(c.ROOT, 'roles', 'dispatcher', 'tasks'))
    with contextlib.ExitStack() as stack:
        ns = c.namespace(stack)
        fs = c.bpffs(stack)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='bpfsteer-bench-b4-'))
        target = {'instance': 'b4', 'bpffs': fs, 'netns': ns.path}
        role_target = {'instance': 'b4role', 'bpffs': fs, 'netns': ns.path}
        c.log('control plane: loading the program')
        c.load_program(target)
        role_ready = False
        sets = {}
        for kind, form, result, n, counts in plan:
            mode = {'result': result, 'return_bindings': RESULTS[result][0], 'return_changes': RESULTS[result][1]}
            if kind == 'role' and not have_role:
                rows.append(dict(mode, kind=kind, form=form, n=n, case='apply',
                                 skipped='roles/dispatcher does not exist yet'))
                continue
            key = 'dispatcher_bindings' if (kind, form) == ('role', 'data') else 'wanted'
            if (n, key) not in sets:
                entries = wanted_set(n)
                alt = [dict(entries[0], label='changed')] + entries[1:]
                sets[(n, key)] = (write_vars(tmp, 'w%d' % n, entries, key), write_vars(tmp, 'a%d' % n, alt, key))
                del entries, alt
            base, alt = sets[(n, key)]
            tgt = role_target if kind == 'role' else target
            play = role_play(tgt, form, result) if kind == 'role' else module_play(tgt, form, result)
            task = 'Apply the bindings (the whole set)' if kind == 'role' else 'bindings'
            if kind == 'role' and not role_ready:
                # first converge loads the role's own program (compile); not what is measured here
                empty = write_vars(tmp, 'empty', [], 'dispatcher_bindings')
                c.playbook(role_play(tgt), args=('-e', '@' + empty))
                role_ready = True
            c.log('control plane: %s %s result=%s %d bindings' % (kind, form, result, n))
            samples = dict((case, []) for case in counts)
            role_tasks = None
            if not counts.get('apply'):
                restore(tgt, base)         # the set in place (untimed), for a no-op
            for i in range(max(counts.values())):
                if i < counts.get('apply', 0):
                    clear(tgt)
                    wall, secs, size, res = timed(play, base, task)
                    samples['apply'].append((wall, secs, size))
                    check_result(res, task, result, 'apply', n)
                    assert count(tgt) == n
                if i < counts.get('no-op', 0):
                    wall, secs, size, res = timed(play, base, task)
                    samples['no-op'].append((wall, secs, size))
                    check_result(res, task, result, 'no-op', n)
                if i < counts.get('change 1', 0):
                    # base -> alt is one relabel; alt -> base (not timed) restores it
                    wall, secs, size, res = timed(play, alt, task)
                    samples['change 1'].append((wall, secs, size))
                    check_result(res, task, result, 'change 1', n)
                    if i + 1 < counts.get('no-op', 0) and i + 1 >= counts.get('apply', 0):
                        timed(play, base, task)      # restore for the next no-op (an apply would clear)
                if kind == 'role':
                    # where the role's time goes: its slowest tasks in the last run
                    slow = sorted(((t['task'].get('seconds') or 0, t['task']['name']) for t in res.tasks),
                                  reverse=True)[:4]
                    role_tasks = [{'task': name, 'seconds': sec} for sec, name in slow]
            for case, vals in samples.items():
                walls = [v[0] for v in vals]
                secs = [v[1] for v in vals if v[1] is not None]
                rows.append(dict(mode, kind=kind, form=form, n=n, case=case, runs=len(vals),
                                 wall_s=c.median(walls), wall_min=min(walls), wall_max=max(walls),
                                 task_s=c.median(secs) if secs else None,
                                 result_bytes=c.median([v[2] for v in vals if v[2] is not None] or [0])))
                if role_tasks and case == list(samples)[-1]:
                    rows[-1]['role_slowest_tasks'] = role_tasks
                c.log('control plane:   %-8s wall %.2f s (task %.2f s) over %d runs' % (
                    case, rows[-1]['wall_s'], rows[-1]['task_s'] or 0, len(vals)))
        # the floor: the same replacement in-process, no Ansible
        for n in backend_sizes:
            entries = wanted_set(n)
            pin = c.pin_dir(target)
            clear(target)
            with c.stopwatch() as t_parse:
                parsed = c.bnd.parse_bindings(entries)
            with c.stopwatch() as t_apply:
                with c.dsp.open_dispatcher(pin) as d:
                    change, _ = c.bnd.plan(d.bindings(), parsed, 'present', True)
                    d.replace_bindings(change.desired)
            with c.stopwatch() as t_noop:
                parsed = c.bnd.parse_bindings(entries)
                with c.dsp.open_dispatcher(pin) as d:
                    with c.stopwatch() as t_read:
                        current = d.bindings()
                    change, _ = c.bnd.plan(current, parsed, 'present', True)
                    assert not change.changed
            rows.append({'kind': 'backend', 'form': '-', 'result': '-', 'n': n, 'case': 'apply',
                         'runs': 1, 'wall_s': t_parse['s'] + t_apply['s'], 'task_s': None,
                         'detail': {'parse': t_parse['s'], 'plan + replace': t_apply['s']}})
            rows.append({'kind': 'backend', 'form': '-', 'result': '-', 'n': n, 'case': 'no-op',
                         'runs': 1, 'wall_s': t_noop['s'], 'task_s': None,
                         'detail': {'read the active table (Dispatcher.bindings)': t_read['s']}})
            c.log('control plane: backend %d: apply %.2f s, no-op %.2f s' % (n, rows[-2]['wall_s'], t_noop['s']))
            del entries, parsed, current
    return {'rows': rows, 'have_role': have_role}


if __name__ == '__main__':
    import sys
    c.install_signal_handlers()
    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
