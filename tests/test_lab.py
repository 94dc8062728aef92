"""The case corpus and ``python -m forksafety lab``: every case forked for real,
its observed outcome against the measured one, and check's verdict against the
expected one (UNSAFE/RISK for every case that hangs or crashes, SAFE for every control)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forksafety.cases import CASES, get_case
from forksafety.errors import UsageError
from forksafety.lab import select_cases

REPO = Path(__file__).resolve().parent.parent
CASES_DIR = REPO / "forksafety" / "cases"


def forksafety(*args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forksafety", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_corpus_has_the_required_cases_and_controls():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    for required in ("chroma-store", "lock-held-by-thread", "grpc-fork-support-off", "grpc-fork-support-on",
                     "sqlite-connection", "plain-module", "finished-thread", "stdlib-logging", "redis-client"):
        assert required in names
    controls = {c.name for c in CASES if c.control}
    assert {"plain-module", "finished-thread", "stdlib-logging", "redis-client"} <= controls


def test_expectations_are_consistent():
    for case in CASES:
        assert set(case.expected) <= {"PASS", "HANG", "CRASH", "ERROR"}, case.name
        assert case.verdict in ("SAFE", "RISK", "UNSAFE"), case.name
        if {"HANG", "CRASH"} & set(case.expected):
            assert case.verdict in ("UNSAFE", "RISK"), f"{case.name}: hangs or crashes but expected {case.verdict}"
        if case.control:
            assert case.verdict == "SAFE" and case.expected == ("PASS",), case.name
        if not case.deterministic:
            assert "not deterministic" in case.note, case.name


def test_environment_switches_are_covered_on_both_sides():
    grpc = {c.env.get("GRPC_ENABLE_FORK_SUPPORT", "absent") for c in CASES if c.module.endswith("grpc_channel")}
    assert {"0", "1"} <= grpc
    tokenizers = {c.env.get("TOKENIZERS_PARALLELISM") for c in CASES if c.module.endswith("tokenizers_batch")}
    assert {"true", "false"} <= tokenizers


def test_every_case_module_defines_use_and_says_what_it_starts():
    for case in CASES:
        path = CASES_DIR / f"{case.module.rsplit('.', 1)[1]}.py"
        tree = ast.parse(path.read_text())  # parsed, not imported: importing starts the resource
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert case.probe in functions, path
        assert ast.get_docstring(tree), path


def test_case_selection():
    assert select_cases(["plain-module", "plain-module"], False) == [get_case("plain-module")]
    assert select_cases(None, True) == list(CASES)
    with pytest.raises(UsageError, match="unknown case 'nope'"):
        select_cases(["nope"], False)
    with pytest.raises(UsageError, match="no case chosen"):
        select_cases([], False)


@pytest.mark.parametrize("args, message", [
    (["lab"], "error: no case chosen: use --all, or --case NAME (see --list)"),
    (["lab", "--case", "nope"], "error: unknown case 'nope'"),
    (["lab", "--all", "--case", "plain-module"], "--case and --all exclude each other"),
    (["lab", "--all", "--repeat", "0"], "must be 1 or more"),
    (["lab", "--case", "plain-module", "--json", "forksafety"], "error: --json forksafety is a folder: pass a file path"),
    (["lab", "--case", "plain-module", "--json", "README.md/lab.json"], "README.md is not a folder"),
    (["lab", "--case", "plain-module", "--json", "/proc/lab.json"], "error: the folder of --json /proc is not writable"),
    (["lab", "--case", "plain-module", "--log-dir", "README.md"], "error: --log-dir README.md is a file, not a folder"),
])
def test_lab_bad_input_exits_2(args, message):
    done = forksafety(*args, timeout=30)  # checked before any case runs
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1


def test_lab_json_onto_an_existing_file_says_it_was_replaced(tmp_path):
    record = tmp_path / "lab.json"
    record.write_text("old")
    done = forksafety("lab", "--case", "plain-module", "--json", str(record), "--log-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"record written to {record} (replaced the previous file)" in done.stdout
    assert json.loads(record.read_text())["agreement"]["figure"] == "1/1"


def test_lab_list():
    done = forksafety("lab", "--list")
    assert done.returncode == 0
    assert [line.split()[0] for line in done.stdout.splitlines()] == [c.name for c in CASES]


@pytest.mark.e2e
def test_lab_all_cases_against_reality(tmp_path):
    record_path = tmp_path / "lab.json"
    done = forksafety("lab", "--all", "--json", str(record_path), "--probe-timeout", "4", "--capture", "light",
                      "--log-dir", str(tmp_path / "dumps"))
    record = json.loads(record_path.read_text())
    by_name = {c["case"]: c for c in record["cases"]}
    assert list(by_name) == [c.name for c in CASES]
    for case in CASES:
        got = by_name[case.name]
        # check is right on every case, deterministic or not
        assert got["verdict"] == case.verdict, (case.name, got)
        if case.deterministic:  # the observed outcome is the measured one
            assert got["observed"] == case.expected[0], (case.name, got)
    right, total = record["agreement"]["right"], record["agreement"]["cases"]
    assert total == len(CASES)
    assert f"agreement: {right}/{total} cases right" in done.stdout
    assert done.returncode == (0 if right == total else 1)
    # the side-by-side table, and evidence of what the chroma child lost
    assert "CASE" in done.stdout and "OBSERVED" in done.stdout and "CHECK" in done.stdout
    chroma = by_name["chroma-store"]["runs"][0]
    assert "tokio-rt-worker" in chroma["lost_threads"] and chroma["rule"] in ("deadlock-proven", "stalled")


def test_lab_interrupt_exits_130_and_stops_every_case(tmp_path):
    import signal
    import time
    import uuid

    import psutil

    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "FS_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "forksafety", "lab", "--case", "grpc-fork-support-off",
                             "--case", "lock-held-by-thread", "--probe-timeout", "60", "--capture", "none",
                             "--log-dir", str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def tagged() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("FS_TEST_MARK") == mark:
                    found.append(p)
            except (psutil.Error, OSError):
                pass
        return found

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tagged()) < 4:  # lab, runner, gRPC server, probe child
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert tagged() == []
