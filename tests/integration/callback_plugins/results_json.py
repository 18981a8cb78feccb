# Test-only stdout callback: prints every task result of a run as one JSON document,
# so the harness can assert on exact module returns.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: results_json
type: stdout
short_description: Whole run as JSON (tests only)
description:
  - Prints {"plays":[{"play":..., "tasks":[{"task":{"name":...}, "hosts":{host: result}}]}], "stats":{...}}.
'''

import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'results_json'

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.results = []
        self._tasks = {}

    def v2_playbook_on_play_start(self, play):
        self.results.append({'play': {'name': play.get_name()}, 'tasks': []})

    def _task_entry(self, task):
        key = task._uuid
        if key not in self._tasks:
            entry = {'task': {'name': task.get_name(), 'action': task.action}, 'hosts': {}}
            self._tasks[key] = entry
            self.results[-1]['tasks'].append(entry)
        return self._tasks[key]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_entry(task)

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _record(self, result, **extra):
        data = dict(result._result)
        data.update(extra)
        self._task_entry(result._task)['hosts'][result._host.get_name()] = data

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = dict((h, stats.summarize(h)) for h in sorted(stats.processed.keys()))
        self._display.display(json.dumps({'plays': self.results, 'stats': summary}, default=str))
