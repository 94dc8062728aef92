"""The pytest plugin on a real test project (pytester, in a subprocess as a user's run):
strict fails a fork with a live thread and names the thread, its origin and the test;
the same tests pass without the flag; a fork with no extra thread passes under strict;
multiprocessing's and billiard's fork contexts are covered; warn only warns."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc")

PROJECT = '''
import multiprocessing
import os
import threading

import billiard


def _reap(pid):
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _with_thread(body):
    stop = threading.Event()
    poller = threading.Thread(target=stop.wait, name="poller", daemon=True)
    poller.start()
    try:
        body()
    finally:
        stop.set()
        poller.join(5)


def test_os_fork_with_thread():
    _with_thread(lambda: _reap(os.fork()))


def _fork_context_process(module):
    p = module.get_context("fork").Process(target=int)
    p.start()
    p.join(10)
    assert p.exitcode == 0


def test_multiprocessing_fork_with_thread():
    _with_thread(lambda: _fork_context_process(multiprocessing))


def test_billiard_fork_with_thread():
    _with_thread(lambda: _fork_context_process(billiard))


def test_fork_alone():
    _reap(os.fork())
'''


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the checkout has no pytest11 entry point: -p loads it
    # ... unless `pip install /path/to/checkout` (README) left forksafety.egg-info in it: then the
    # entry point registers the plugin too and pytest refuses the second name; -p alone loads it
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_forks=PROJECT)
    return pytester


def run(project, *args):
    return project.runpytest_subprocess("-p", "forksafety.pytest_plugin", "-p", "no:cacheprovider", *args,
                                        timeout=120)


def test_strict_fails_every_fork_with_a_live_thread_and_names_it(project):
    result = run(project, "--forksafety=strict")
    result.assert_outcomes(failed=3, passed=1)
    out = result.stdout.str()
    for test in ("test_os_fork_with_thread", "test_multiprocessing_fork_with_thread", "test_billiard_fork_with_thread"):
        assert f"os.fork() in test test_forks.py::{test} refused" in out
    assert "1 x poller (Python thread running threading.Event.wait, started at test_forks.py" in out
    assert "ForkUnsafeError" in out and "Fix (one of):" in out
    assert "forksafety: strict" in out  # the report header says the plugin is on
    assert "test_fork_alone PASSED" in out or result.parseoutcomes()["passed"] == 1


def test_without_the_flag_the_same_tests_pass_and_nothing_is_said(project):
    result = run(project)
    result.assert_outcomes(passed=4)
    assert "forksafety" not in result.stdout.str()


def test_warn_passes_and_warns_naming_the_test(project):
    result = run(project, "--forksafety")
    result.assert_outcomes(passed=4, warnings=3)
    out = result.stdout.str()
    assert "ForkSafetyWarning: forksafety: fork() in test test_forks.py::test_os_fork_with_thread" in out
    assert "1 x poller" in out


def test_a_bad_mode_is_a_usage_error(project):
    result = run(project, "--forksafety=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'loud'" in result.stderr.str()


def test_thread_origin_names_the_test_not_the_pytest_console_script(project):
    """Users run the ``pytest`` console script (venv/bin/pytest), not ``python -m pytest``:
    the thread's origin must be the test's line, not the script's ``<module>``."""
    script = Path(sys.executable).parent / "pytest"
    if not script.exists():
        pytest.skip(f"no pytest console script next to {sys.executable}")
    result = project.run(str(script), "-p", "forksafety.pytest_plugin", "-p", "no:cacheprovider",
                         "--forksafety=strict", "-q", "--tb=short", "test_forks.py::test_os_fork_with_thread",
                         timeout=120)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "1 x poller (Python thread running threading.Event.wait, started at test_forks.py:" in out
    assert f"started at {script}" not in out and "bin/pytest:" not in out
