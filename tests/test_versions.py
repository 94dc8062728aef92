"""The version matrix (make versions): hash-pinned locks with no index lines, one cached
environment per set, the report's environment reproducing the bug with our harness,
and a killed run leaving nothing a later run would take for complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from forksafety import versionsets
from tests.conftest import PYTHON, REPO

SCRIPT = REPO / "scripts" / "versions.py"


@pytest.mark.parametrize("vset", versionsets.SETS, ids=lambda s: s.name)
def test_each_lock_is_hash_pinned_and_names_no_index(vset):
    text = vset.lock_path.read_text()
    assert "://" not in text and not re.search(r"^\s*(-i|--index-url|--extra-index-url|-f|--find-links)\b", text, re.M)
    requirements = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert len(requirements) > 20
    for line in requirements:
        assert re.match(r"^[A-Za-z0-9_.\-\[\]]+==\S+ \\$", line), line  # exact pin, hashes follow
    assert text.count("--hash=sha256:") >= len(requirements)
    for needed in ("psutil==", "rich==", "python-dotenv==", "redis==", "py-spy==", "celery==", "chromadb=="):
        assert f"\n{needed}" in text, (vset.name, needed)


def test_the_report_lock_has_the_reports_pins():
    text = (REPO / "versions" / "report-py3.12.lock").read_text()
    for pin in ("celery==5.5.3", "billiard==4.2.3", "chromadb==1.3.4", "langchain-chroma==0.2.6", "langchain-core==0.3.77"):
        assert f"\n{pin} " in text, pin


def test_a_missing_interpreter_is_skipped_not_failed(tmp_path):
    missing = versionsets.VersionSet("future", "3.99", "pins-py3.12.lock")
    results = versionsets.run_matrix([missing], "redis://127.0.0.1:1/0", "test", cache=tmp_path)
    assert results[0].status == "skipped: python3.99 not found"
    assert "skipped: python3.99 not found" in versionsets.text_table(results)


def test_a_torn_complete_marker_is_not_a_complete_env(tmp_path):
    """A build killed while its .complete marker was being written leaves an empty or cut
    file: the next run must rebuild, not take the half-written marker as a finished build."""
    folder = tmp_path / "chromadb-1.0.0-0123456789abcdef"
    folder.mkdir()
    assert not versionsets.is_complete(folder)
    for torn in ("", '{"lock": "versions/chromadb-1.0.0.lo', "null", "[]"):
        (folder / versionsets.COMPLETE).write_text(torn)
        assert not versionsets.is_complete(folder), torn
    (folder / versionsets.COMPLETE).write_text(json.dumps({"lock": "versions/chromadb-1.0.0.lock", "python": "x",
                                                           "pip_check": "No broken requirements found."}))
    assert versionsets.is_complete(folder)


def test_an_unwritable_cache_is_a_usage_error():
    done = subprocess.run([PYTHON, str(SCRIPT), "--cache", "/proc/forksafety-cache"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--cache /proc/forksafety-cache is not writable" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_unwritable_json_folder_is_a_usage_error(tmp_path):
    done = subprocess.run([PYTHON, str(SCRIPT), "--cache", str(tmp_path), "--json", "/proc/forksafety/v.json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "the folder of --json /proc/forksafety is not writable" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _tagged(run_env_value: str | None = None) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            value = proc.environ().get(versionsets.TAG_ENV)
        except (psutil.Error, OSError):
            continue
        if value and (run_env_value is None or value == run_env_value) and proc.pid != os.getpid():
            found.append(proc)
    return found


def _run_versions(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_the_reports_env_and_chromadb_063_built_and_run(tmp_path):
    out = tmp_path / "versions.json"
    done = _run_versions(["--set", "report-py3.12", "--set", "chromadb-0.6.3", "--json", str(out)], timeout=2400)
    record = json.loads(out.read_text())
    results = {r["name"]: r for r in record["results"]}
    report = results["report-py3.12"]
    assert report["status"] == "ran", report
    v = report["versions"]
    assert (v["celery"], v["billiard"], v["chromadb"], v["langchain-chroma"], v["langchain-core"]) == \
        ("5.5.3", "4.2.3", "1.3.4", "0.2.6", "0.3.77") and v["python"].startswith("3.12.")
    assert report["pool_start_method_setting"] == "not available"  # Celery 5.5.3 has no worker_pool_start_method
    assert report["start_method"] == "fork"  # read from the pool child itself
    assert report["demo"]["outcome"] == "HANG" and report["celery"]["outcome"] == "HANG", report
    assert any("tokio-runtime-w" in t for t in report["lost_threads"]), report  # 1.3.4 names its Tokio threads so
    old = results["chromadb-0.6.3"]
    assert old["status"] == "ran" and old["versions"]["chromadb"] == "0.6.3", old
    assert old["start_method"] == "fork" and old["pool_start_method_setting"] == "available"
    # every outcome matched its expectation and every printed thread name is in the origin table
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "report-py3.12" in done.stdout and "threads the child lost" in done.stdout
    assert _tagged(record["run_id"]) == []
    for name in ("report-py3.12", "chromadb-0.6.3"):
        folders = list(versionsets.CACHE_DIR.glob(f"{name}-*"))
        assert any(versionsets.is_complete(f) for f in folders if f.is_dir()), folders


def _wait_for(predicate, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return None


@pytest.mark.e2e
def test_killing_a_build_leaves_no_process_and_no_complete_env(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--set", "chromadb-0.6.3", "--cache", str(cache)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pip = _wait_for(lambda: [p for p in _tagged() if "install" in p.cmdline() and
                                 str(cache) in " ".join(p.cmdline())], 120)
        assert pip, "pip install never started"
        time.sleep(3)  # let it write part of the environment
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_for(lambda: not [p for p in _tagged() if p.pid != proc.pid and
                                      "install" in " ".join(p.cmdline())], 15), "pip outlived the runner"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    folders = [f for f in cache.glob("chromadb-0.6.3-*") if f.is_dir()]
    assert folders and not any(versionsets.is_complete(f) for f in folders)


@pytest.mark.e2e
def test_killing_a_run_leaves_no_worker_or_redis(tmp_path):
    # uses the shared cache: built by the test above or by make versions
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--set", "report-py3.12"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        worker = _wait_for(lambda: [p for p in _tagged() if "celery" in " ".join(p.cmdline()) and
                                    "worker" in p.cmdline()], 1200)
        assert worker, "no Celery worker started"
        run_id = worker[0].environ()[versionsets.TAG_ENV]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_for(lambda: _tagged(run_id) == [], 20), [p.cmdline() for p in _tagged(run_id)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_expectations_come_from_the_lost_threads_and_the_start_method():
    from forksafety.origins import load_origins
    from forksafety.outcome import Outcome

    unsafe = versionsets.unsafe_by(load_origins())
    rust = versionsets.SetResult("x", "3.12", demo={"lost_threads": ["tokio-rt-worker", "sqlx-sqlite-wor"]},
                                 start_method="fork")
    assert versionsets.expect(rust, unsafe, "linux") == {"demo": "HANG", "celery": "HANG"}
    assert versionsets.expect(rust, unsafe, "darwin") == {"demo": "CRASH SIGTRAP", "celery": "CRASH SIGTRAP"}
    rust.start_method = "spawn"
    assert versionsets.expect(rust, unsafe, "linux") == {"demo": "HANG", "celery": "PASS"}
    no_rust = versionsets.SetResult("y", "3.12", demo={"lost_threads": []}, start_method="fork")
    # the demo's clean exit: whatever Outcome calls a forked child that exited 0
    assert versionsets.expect(no_rust, unsafe, "linux") == {"demo": Outcome.OK.value, "celery": "PASS"}
