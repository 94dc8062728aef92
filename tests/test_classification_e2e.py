"""Outcome classification on real prefork workers: crashes by signal, slow-but-healthy
tasks that must not be called HANG, and a real multi-thread deadlock caught by 'stalled'."""

from __future__ import annotations

import sys

import pytest

from forksafety.broker import resolve_broker
from forksafety.harness import RunOptions, Scenario, run_scenario
from forksafety.outcome import Expected, Outcome
from forksafety.settings import load_settings
from tests.conftest import processes_with_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")]

MODULE = "tests.celery_tasks.diagnostic_tasks"


@pytest.fixture
def run(redis_url, tmp_path):
    broker = resolve_broker("redis", redis_url)
    settings = load_settings(environ={"CHROMA_DIR": str(tmp_path / "chroma")})
    options = RunOptions(timeout=20, stall=1.0, log_dir=tmp_path / "dumps", capture=False)

    def _run(task: str, *args, expected: Outcome = Outcome.PASS, signal: str | None = None):
        scenario = Scenario(pool="prefork", variant=task, module=MODULE, task=f"{MODULE}.{task}", args=args,
                            expected=Expected(expected, signal), check="any")
        verdict = run_scenario(scenario, broker, settings, options)
        assert processes_with_env("FORKSAFETY_RUN_ID", options.run_id) == []
        return verdict

    yield _run
    broker.cleanup()


@pytest.mark.parametrize("signame", ["SIGTRAP", "SIGSEGV"])
def test_child_killed_by_a_signal_is_a_crash_with_its_name(run, signame):
    verdict = run("kill_own_child", signame, expected=Outcome.CRASH, signal=signame)
    assert verdict.outcome is Outcome.CRASH and verdict.signal == signame, verdict.detail
    assert "WorkerLostError" in verdict.detail and verdict.matched


@pytest.mark.parametrize("task", ["sleep_then_return", "compute_then_return", "event_wait_then_return",
                                  "helper_thread_sets_event"])
def test_slow_but_healthy_tasks_are_not_hangs(run, task):
    # 3 s of work against a 1 s stall window: neither hang rule may fire.
    verdict = run(task, 3.0)
    assert verdict.outcome is Outcome.PASS, (verdict.outcome, verdict.rule, verdict.detail)
    assert verdict.verdict_seconds is not None and verdict.verdict_seconds >= 2.5


def test_two_thread_deadlock_is_caught_by_the_stall_rule(run):
    verdict = run("two_thread_deadlock", expected=Outcome.HANG)
    assert verdict.outcome is Outcome.HANG and verdict.rule == "stalled", (verdict.rule, verdict.detail)
    # the stall window (1 s) plus polling, far below the 20 s deadline
    assert verdict.verdict_seconds < 5
