"""Expected outcomes come from the start method the pool child really used.

Unit part: the derivation (fork: HANG on Linux, CRASH SIGTRAP on macOS; spawn and
forkserver: PASS, whatever the platform). End-to-end part, on Linux: a real
worker per forced start method (``run_test.py --start-method``); the child's own
report is in the verdict and the JSON, and the outcome follows it.
"""

from __future__ import annotations

import json
import sys

import pytest

from forksafety import harness, poolstart
from forksafety.errors import UsageError
from forksafety.outcome import Expected, Outcome, expected_outcome
from tests.conftest import run_cli


@pytest.mark.parametrize("platform, method, expected", [
    ("linux", "fork", Expected(Outcome.HANG)),
    ("darwin", "fork", Expected(Outcome.CRASH, "SIGTRAP")),
    ("linux", "spawn", Expected(Outcome.PASS)),
    ("darwin", "spawn", Expected(Outcome.PASS)),
    ("linux", "forkserver", Expected(Outcome.PASS)),
    ("darwin", "forkserver", Expected(Outcome.PASS)),
])
def test_expected_outcome_follows_the_start_method(platform, method, expected):
    assert expected_outcome("prefork", "module-level", platform=platform, start_method=method) == expected


def test_a_spawn_variant_whose_child_was_forked_expects_the_bug():
    # e.g. a Celery without worker_pool_start_method ignores the setting: the child forks
    assert expected_outcome("prefork", "spawn", platform="linux", start_method="fork") == Expected(Outcome.HANG)
    assert expected_outcome("threads", platform="darwin", start_method=poolstart.NO_POOL_CHILD) == Expected(Outcome.PASS)


def test_billiards_default_here_is_fork_on_linux():
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux default")
    assert poolstart.default_start_method() == "fork"
    assert poolstart.predicted_start_method("prefork", {}) == "fork"
    assert poolstart.predicted_start_method("prefork", {"POOL_START_METHOD": "spawn"}) == "spawn"
    assert poolstart.predicted_start_method("threads", {}) == poolstart.NO_POOL_CHILD


def test_force_start_method_sets_prefork_only_and_refuses_a_conflict():
    scenarios = harness.select_scenarios(["prefork", "threads"], None, False)
    forced = poolstart.force_start_method(scenarios, "spawn")
    assert dict(forced[0].env) == {"POOL_START_METHOD": "spawn"} and forced[1].env == ()
    with pytest.raises(UsageError, match="already starts the pool children with spawn"):
        poolstart.force_start_method(harness.select_scenarios(None, ["spawn"], False), "fork")
    with pytest.raises(UsageError, match="prefork pool only"):
        poolstart.force_start_method(harness.select_scenarios(["threads"], None, False), "fork")


def test_start_method_usage_errors_exit_2(tmp_path):
    done = run_cli(["--pool", "threads", "--start-method", "fork"], timeout=60)
    assert done.returncode == 2 and "prefork pool only" in done.stderr and "Traceback" not in done.stderr
    done = run_cli(["--variant", "forkserver", "--start-method", "spawn"], timeout=60)
    assert done.returncode == 2 and "already starts the pool children with forkserver" in done.stderr


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux expectations")
@pytest.mark.parametrize("method, outcome, process_class", [
    ("fork", "HANG", "ForkProcess"), ("spawn", "PASS", "SpawnProcess"), ("forkserver", "PASS", "ForkServerProcess")])
def test_forced_start_method_is_read_from_the_child(redis_url, tmp_path, method, outcome, process_class):
    out = tmp_path / "results.json"
    done = run_cli(["--pool", "prefork", "--start-method", method, "--broker", "redis", "--json", str(out),
                    "--log-dir", str(tmp_path / "dumps"), "--no-capture"],
                   env={"REDIS_URL": redis_url, "CHROMA_DIR": str(tmp_path / "chroma")}, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())["results"][0]
    assert result["start_method"] == method, result
    assert result["outcome"] == outcome and result["expected"] == outcome and result["matched"], result
    assert f"│ {method}" in done.stdout  # the table shows it
    # the runner read it from the pool child itself: its class, name and billiard's answer there
    child = result["extra"]["pool_child"]
    assert child["process_class"] == process_class and child["start_method"] == method, child
    assert child["process_name"].startswith(process_class.replace("Process", "PoolWorker")), child
    assert child["billiard_start_method"] in (method, None), child
    if result["child_pid"] is not None:
        assert child["pid"] == result["child_pid"], (child, result)
