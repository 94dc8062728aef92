"""The main job, for real: a Celery worker per pool against the module-level ChromaDB store.

prefork deadlocks (Linux), every other pool and the working fixes pass; against a
real Redis and with kombu's filesystem transport; nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import PYTHON, REPO, RUNNER, free_port, processes_with_env, redis_keys, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux expectations")]

EXPECTED_LINUX = {
    ("prefork", "module-level"): "HANG",
    ("threads", "module-level"): "PASS",
    ("solo", "module-level"): "PASS",
    ("gevent", "module-level"): "PASS",
    ("eventlet", "module-level"): "PASS",
    ("prefork", "worker-process-init"): "PASS",
    ("prefork", "lazy"): "PASS",
    ("prefork", "lazy-in-task"): "HANG",
    ("prefork", "spawn"): "PASS",
    ("prefork", "forkserver"): "PASS",
    ("prefork", "segment-api"): "ERROR",  # not available: chromadb 1.5.9 without chroma-hnswlib
    ("prefork", "chroma-server"): "PASS",
}


def _assert_nothing_left(record: dict, chroma: Path) -> None:
    deadline = time.monotonic() + 5
    while processes_with_env("FORKSAFETY_RUN_ID", record["run_id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env("FORKSAFETY_RUN_ID", record["run_id"]) == []
    assert not list(chroma.glob("run-*")), "per-scenario Chroma folders must be removed"


def _assert_prefork_hang_evidence(result: dict) -> None:
    assert result["outcome"] == "HANG" and result["rule"] == "deadlock-proven", result
    assert result["verdict_seconds"] is not None and result["verdict_seconds"] < 1.0, result
    evidence = result["evidence"]
    assert "tokio-rt-worker" in evidence["lost_threads"]
    assert evidence["syscall"].startswith("futex(") and "PRIVATE" in evidence["syscall"]
    text = Path(evidence["log"]).read_text()
    assert text.startswith("# forksafety celery pool child capture")
    for needle in ("# command:", "# platform:", "chromadb 1.5.9", "tokio-rt-worker", "futex", "wchan futex"):
        assert needle in text, needle
    assert "add_documents_task" in text  # the Python frame of the task, from py-spy


def test_all_pools_and_variants_against_real_redis(redis_url, tmp_path):
    keys_before = redis_keys(redis_url)
    chroma = tmp_path / "chroma"
    out = tmp_path / "results.json"
    done = run_cli(["--all", "--broker", "redis", "--json", str(out), "--log-dir", str(tmp_path / "dumps")],
                   env={"REDIS_URL": redis_url, "CHROMA_DIR": str(chroma)}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"broker: redis {redis_url} (REDIS_URL)" in done.stdout
    record = json.loads(out.read_text())
    got = {(r["pool"], r["variant"]): r["outcome"] for r in record["results"]}
    assert got == EXPECTED_LINUX
    assert all(r["matched"] for r in record["results"]) and record["all_matched"]
    assert record["versions"]["chromadb"] == "1.5.9" and record["platform"] == "linux"
    prefork = next(r for r in record["results"] if (r["pool"], r["variant"]) == ("prefork", "module-level"))
    _assert_prefork_hang_evidence(prefork)
    assert (tmp_path / "dumps" / "worker_prefork.log").exists()
    _assert_nothing_left(record, chroma)
    assert redis_keys(redis_url) == keys_before, "a run must leave no keys or queues behind"


def test_five_pools_with_the_filesystem_transport(tmp_path):
    chroma = tmp_path / "chroma"
    out = tmp_path / "results.json"
    done = run_cli(["--pool", "prefork", "--pool", "threads", "--pool", "solo", "--pool", "gevent",
                    "--pool", "eventlet", "--broker", "filesystem", "--json", str(out),
                    "--log-dir", str(tmp_path / "dumps"), "--no-capture"],
                   env={"CHROMA_DIR": str(chroma)}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broker: filesystem (kombu filesystem transport" in done.stdout
    record = json.loads(out.read_text())
    assert {r["pool"]: r["outcome"] for r in record["results"]} == {
        "prefork": "HANG", "threads": "PASS", "solo": "PASS", "gevent": "PASS", "eventlet": "PASS"}
    _assert_nothing_left(record, chroma)
    folder = record["broker"].split(" in ", 1)[1].rstrip(")")
    assert not Path(folder).exists(), "the filesystem broker's folder must be removed"


def test_auto_starts_a_private_redis_when_redis_url_does_not_answer(tmp_path):
    out = tmp_path / "results.json"
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(["--pool", "threads", "--json", str(out), "--log-dir", str(tmp_path / "dumps")],
                   env={"REDIS_URL": url, "CHROMA_DIR": str(tmp_path / "c")}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(private redis-server we started)" in done.stdout
    assert f"REDIS_URL {url} did not answer in 1 s" in done.stdout  # says why it was passed over
    record = json.loads(out.read_text())
    assert record["results"][0]["outcome"] == "PASS"
    _assert_nothing_left(record, tmp_path / "c")  # the private redis-server is tagged too


def test_spawn_and_forkserver_children_are_not_forked_from_the_worker(redis_url, tmp_path):
    dumps = tmp_path / "dumps"
    out = tmp_path / "results.json"
    done = run_cli(["--variant", "spawn", "--variant", "forkserver", "--broker", "redis", "--json", str(out),
                    "--log-dir", str(dumps)], env={"REDIS_URL": redis_url, "CHROMA_DIR": str(tmp_path / "c")},
                   timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())
    assert [r["outcome"] for r in record["results"]] == ["PASS", "PASS"]
    spawn_log = (dumps / "worker_prefork_spawn.log").read_text()
    forkserver_log = (dumps / "worker_prefork_forkserver.log").read_text()
    assert "SpawnPoolWorker-1" in spawn_log and "ForkPoolWorker" not in spawn_log
    assert "ForkServerPoolWorker-1" in forkserver_log and "ForkPoolWorker" not in forkserver_log
    _assert_nothing_left(record, tmp_path / "c")  # including the fork server process


def _wait_for_workers(run_suffix: str, count: int, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in psutil.process_iter() if _run_id(p).endswith(run_suffix)]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    return []


def _run_id(proc: psutil.Process) -> str:
    try:
        return proc.environ().get("FORKSAFETY_RUN_ID", "")
    except (psutil.Error, OSError):
        return ""


def _left(run_suffix: str, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in psutil.process_iter() if _run_id(p).endswith(run_suffix)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupting_the_runner_leaves_no_process(redis_url, tmp_path, how):
    runner = subprocess.Popen([PYTHON, str(RUNNER), "--all", "--parallel", "2", "--broker", "redis",
                               "--log-dir", str(tmp_path / "dumps")], cwd=REPO,
                              env={**os.environ, "REDIS_URL": redis_url, "CHROMA_DIR": str(tmp_path / "c")},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    suffix = f"-{runner.pid}"
    try:
        workers = _wait_for_workers(suffix, 2, timeout=60)
        assert workers, "the runner never started its workers"
        time.sleep(0.5)  # let the workers get into their stride (pool children forked)
        runner.send_signal(getattr(signal, how))
        output, _ = runner.communicate(timeout=60)
        if how == "SIGINT":
            assert runner.returncode == 130, output
            assert "interrupted by SIGINT" in output
        assert _left(suffix, timeout=10) == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)
        for p in _left(suffix, timeout=0):
            p.kill()
