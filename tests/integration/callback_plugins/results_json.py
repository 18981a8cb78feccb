# Stdout callback for the tests and the benchmarks: prints every task result of a run as one
# JSON document, so the harness can assert on exact module returns, with how long each task took
# so a benchmark can tell Ansible's fixed cost from the module's own work.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: results_json
type: stdout
short_description: Whole run as JSON with task durations (tests and benchmarks only)
description:
  - Prints {"plays":[{"play":..., "tasks":[{"task":{"name":..., "seconds":...}, "hosts":{host: result}}]}], "stats":{...}}.
  - Each host result carries C(_task_seconds), the time from the task's start to that host's result.
'''

import json
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'results_json'

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.results = []
        self._tasks = {}
        self._started = {}

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
        self._started[task._uuid] = time.time()
        self._task_entry(task)

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _record(self, result, **extra):
        data = dict(result._result)
        data.update(extra)
        now = time.time()
        data['_task_seconds'] = now - self._started.get(result._task._uuid, now)
        entry = self._task_entry(result._task)
        entry['hosts'][result._host.get_name()] = data
        entry['task']['seconds'] = data['_task_seconds']

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
