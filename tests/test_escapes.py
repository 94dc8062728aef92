"""Chroma's own escape hatches as prefork fix variants, for real (Linux expectations).

chroma-server: a real ``chroma run`` on a free loopback port, started and stopped by
the runner; the module-level ``chromadb.HttpClient`` survives the fork: PASS.
segment-api: chromadb 1.5.9 without chroma-hnswlib cannot run it; the variant says
"not available" and why, and that ERROR is what we expect (never a faked PASS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from forksafety import escapes
from forksafety.outcome import Expected, Outcome
from tests.conftest import PYTHON, REPO, processes_with_env, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux expectations")


def test_segment_api_check_imports_no_chromadb():
    code = ("import sys; from forksafety import escapes; why = escapes.segment_api_missing(); "
            "print(repr(why)); assert 'chromadb' not in sys.modules")
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_segment_api_is_not_available_with_our_pin():
    # our lock: chromadb 1.5.9, no chroma-hnswlib (only in chromadb's dev extra)
    why = escapes.segment_api_missing()
    assert why and "chromadb 1.5.9 keeps chromadb.api.segment.SegmentAPI" in why and "hnswlib" in why
    assert escapes.expected_segment_api() == Expected(Outcome.ERROR)


@pytest.mark.e2e
def test_chroma_server_and_segment_api_under_prefork(redis_url, tmp_path):
    out = tmp_path / "results.json"
    done = run_cli(["--variant", "chroma-server", "--variant", "segment-api", "--broker", "redis",
                    "--json", str(out), "--log-dir", str(tmp_path / "dumps"), "--no-capture"],
                   env={"REDIS_URL": redis_url, "CHROMA_DIR": str(tmp_path / "chroma")}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())
    results = {r["variant"]: r for r in record["results"]}
    server = results["chroma-server"]
    assert server["outcome"] == "PASS" and server["matched"] and server["start_method"] == "fork", server
    log = (tmp_path / "dumps" / "chroma_prefork_chroma-server.log").read_text()
    assert log.startswith("# ") and " run --host 127.0.0.1 --port " in log.splitlines()[0]
    segment = results["segment-api"]
    assert segment["outcome"] == "ERROR" and segment["expected"] == "ERROR" and segment["matched"], segment
    assert "not available: chromadb 1.5.9 keeps chromadb.api.segment.SegmentAPI" in segment["detail"]
    # the server and the workers are gone, and so is the server's data folder
    assert processes_with_env("FORKSAFETY_RUN_ID", record["run_id"]) == []
    assert not list((tmp_path / "chroma").glob("run-*"))


@pytest.mark.e2e
def test_a_killed_runner_leaves_no_chroma_server(tmp_path):
    import signal
    import time

    import psutil

    from tests.conftest import RUNNER

    proc = subprocess.Popen([PYTHON, str(RUNNER), "--variant", "chroma-server", "--no-capture",
                             "--log-dir", str(tmp_path / "dumps")], cwd=REPO,
                            env={**os.environ, "CHROMA_DIR": str(tmp_path / "chroma")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def servers() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if "run" in p.cmdline() and str(tmp_path / "chroma") in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    try:
        deadline = time.monotonic() + 60
        while not servers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert servers(), "the chroma server never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while servers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert servers() == [], [p.cmdline() for p in servers()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
