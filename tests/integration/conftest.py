"""Fixtures: every test gets its own network namespace and its own bpffs mount."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

sys.path.insert(0, harness.COLLECTIONS)


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError('the integration tests need root (BPF, network namespaces)')
    if not os.path.isdir(os.path.join(harness.COLLECTIONS, 'ansible_collections', 'bpfsteer', 'sk_lookup')):
        raise pytest.UsageError('run scripts/bootstrap first (collections path missing)')


@pytest.fixture
def ns():
    namespace = harness.Namespace()
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def bpffs():
    """A private mount point; the modules mount a fresh bpffs there themselves."""
    tmp = tempfile.mkdtemp(prefix='bpfsteer-bpffs-')
    path = os.path.join(tmp, 'bpf')
    try:
        yield path
    finally:
        if os.path.ismount(path):
            subprocess.run(['umount', path], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def target(ns, bpffs):
    """The options that address this test's dispatcher instance."""
    return {'instance': 'test', 'bpffs': bpffs, 'netns': ns.path}


@pytest.fixture
def source():
    return harness.render_dispatch(missing_socket='drop', protected=[])


@pytest.fixture
def loaded(target, source):
    """A dispatcher loaded into the test namespace."""
    out = harness.run_module('sk_lookup_program', dict(target, content=source))
    assert out['changed'] and out['action'] == 'load'
    return target
