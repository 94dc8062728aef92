"""End-to-end tests of scripts/demo_crash.py: the real fork, the real ChromaDB store.

The outcomes asserted here are the ones measured on Linux with the pinned
chromadb (see forksafety/demo.py VARIANTS); they are written out, not read
from the code, so a change of behaviour fails a test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from forksafety.watch import RUN_ID_ENV, processes_of_run, sweep_run, wait_until
from tests.demo_helpers import (LiveScript, alive, assert_gone, assert_header, dead_pid, group_gone, private_tmp,
                                run_script)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="outcomes measured on Linux")]

# (variant, documents the child adds) -> outcome measured on Linux x86_64, chromadb 1.5.9.
MEASURED = {
    ("module-level", 2): "HANG",
    ("fixed", 2): "PASS",
    ("lazy", 2): "PASS",
    ("lazy-in-task", 2): "HANG",
    ("other-dir", 2): "HANG",
    ("other-dir", 1): "PASS",
    ("clear-system-cache", 2): "HANG",
    ("close-before-fork", 2): "HANG",
}


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def _chroma_left(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "chroma"
    return list(folder.iterdir()) if folder.exists() else []


def test_the_bug_hangs_with_evidence(tmp_path):
    out = run_script("demo_crash.py", "--json", tmp_path / "demo.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = _record(tmp_path / "demo.json")
    assert (rec["variant"], rec["outcome"], rec["expected"], rec["matched"]) == ("module-level", "HANG", "HANG", True)
    assert rec["rule"] == "deadlock-proven"
    # the threads the child did not inherit, and its own thread count against the parent's
    assert "tokio-rt-worker" in rec["lost_threads"] and "sqlx-sqlite-wor" in rec["lost_threads"]
    assert rec["child_threads"] == ["python"] and len(rec["parent_threads"]) > 1
    # state, wchan and the current syscall: an untimed, private futex wait whose value nobody changed
    assert rec["child_state"] in ("S", "D") and "futex" in rec["child_wchan"]
    assert rec["syscall"].startswith("futex(") and rec["syscall_raw"].split()[0] in ("202", "98")
    futex = rec["futex"]
    assert futex["op_name"].startswith("FUTEX_WAIT") and futex["private"] and futex["timeout"] == 0
    assert futex["value_now"] == futex["val"]
    assert "chromadb" in rec["versions"] and rec["machine"]
    # the log: header, outcome, the same evidence, the Python stack of the add call
    log = Path(rec["log"])
    assert log.parent == tmp_path / "logs" and re.fullmatch(r"demo_module-level_\d{8}-\d{6}-\d{3}\.log", log.name)
    text = log.read_text()
    assert_header(text)
    assert "outcome: HANG (deadlock-proven), expected HANG" in text
    assert "not inherited by the child" in text and "tokio-rt-worker" in text
    assert "FUTEX_WAIT" in text and f"wchan {rec['child_wchan']}" in text
    assert "add_documents" in text  # py-spy / pystack stack of the child
    assert "HANG (deadlock-proven)" in out.stdout and "not inherited:" in out.stdout
    # the child is stopped and the store's folder removed
    assert_gone(rec["pids"]["child"])
    assert _chroma_left(tmp_path) == []


def test_fixed_finishes(tmp_path):
    (tmp_path / "demo.json").write_text('{"an": "older record"}')
    out = run_script("demo_crash.py", "--fixed", "--json", tmp_path / "demo.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # an existing --json file is replaced, and the output says so (never silently)
    assert f"record written to {tmp_path / 'demo.json'} (replaced the previous file)" in out.stdout
    rec = _record(tmp_path / "demo.json")
    assert (rec["variant"], rec["outcome"], rec["matched"], rec["exit_code"]) == ("fixed", "PASS", True, 0)
    assert rec["parent_threads"] == ["python"]  # the parent never opened anything
    assert "tokio-rt-worker" in rec["child_threads"]  # the child's own runtime, started after the fork
    assert rec["lost_threads"] == [] and rec["syscall"] is None
    assert_header(Path(rec["log"]).read_text())
    assert_gone(rec["pids"]["child"])
    assert _chroma_left(tmp_path) == []


@pytest.mark.parametrize("variant,documents", [k for k in MEASURED if k[0] not in ("module-level", "fixed")],
                         ids=lambda v: str(v))
def test_variant_outcome_is_the_measured_one(tmp_path, variant, documents):
    out = run_script("demo_crash.py", "--variant", variant, "--documents", documents, "--timeout", "5",
                     "--no-stacks", "--json", tmp_path / "demo.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path)
    rec = _record(tmp_path / "demo.json")
    assert rec["outcome"] == MEASURED[(variant, documents)], out.stdout + out.stderr
    assert out.returncode == 0 and rec["matched"], out.stdout  # the code's expectation is the measured one
    assert rec["documents"] == documents
    if rec["outcome"] == "HANG":
        assert rec["syscall"].startswith("futex(") and rec["futex"]["timeout"] == 0
        assert rec["lost_threads"]
    assert_header(Path(rec["log"]).read_text())
    assert_gone(rec["pids"]["child"])
    assert _chroma_left(tmp_path) == []


@pytest.mark.parametrize("args,message", [
    (["--variant", "no-such-variant"], "unknown variant 'no-such-variant': use one of module-level"),
    (["--timeout", "-1"], "must be a positive number"),
    (["--timeout", "soon"], "is not a number"),
    (["--documents", "0"], "must be 1 or more"),
    (["--fixed", "--variant", "module-level"], "not allowed with"),
    (["--json", "{file}/record.json"], "not writable"),
    (["--strace", "--strace-path", "/nonexistent/strace"], "strace is not installed"),
    # bounds: nonsense durations and sizes are refused before anything starts
    (["--timeout", "1e308"], "must be at most 3600 seconds"),
    (["--timeout", "0.0001"], "must be at least 0.5 seconds"),
    (["--stall", "99999"], "must be at most 3600 seconds"),
    (["--documents", "100000"], "must be at most 10000"),
    # an empty path would silently mean the current folder
    (["--log-dir", ""], "an empty path is not allowed"),
    (["--json", ""], "an empty path is not allowed"),
    # an option given twice with different values, an option that does nothing alone
    (["--variant", "module-level", "--variant", "fixed"], "--variant given twice (module-level and fixed)"),
    (["--strace-path", "/usr/bin/strace"], "--strace-path is used only with --strace"),
    # an strace that cannot run: said at once, not "did not finish within 130 s"
    (["--strace", "--strace-path", "{file}"], "could not run strace ({file}): Permission denied"),
    (["--strace", "--strace-path", "{garbage}"], "could not run strace ({garbage}): Exec format error"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "garbage").write_bytes(b"\x00\x01 not a program")
    (tmp_path / "garbage").chmod(0o755)
    args = [a.replace("{file}", str(tmp_path / "file")).replace("{garbage}", str(tmp_path / "garbage")) for a in args]
    message = message.replace("{file}", str(tmp_path / "file")).replace("{garbage}", str(tmp_path / "garbage"))
    out = run_script("demo_crash.py", *args, tmp_path=tmp_path, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "forked child" not in out.stdout


def test_list_shows_every_variant(tmp_path):
    out = run_script("demo_crash.py", "--list", tmp_path=tmp_path, timeout=60)
    assert out.returncode == 0
    for variant, _ in MEASURED:
        assert re.search(rf"^{re.escape(variant)}\s+expected ", out.stdout, re.M)


def test_strace_points_at_the_childs_unfinished_futex(tmp_path):
    env = private_tmp(tmp_path)
    out = run_script("demo_crash.py", "--strace", "--json", tmp_path / "demo.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path, timeout=240, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    # only the record the user asked for is announced (not the inner demo's temporary one), and
    # the temporary folder is gone
    assert re.findall(r"^record written to .*$", out.stdout, re.M) == [f"record written to {tmp_path / 'demo.json'}"]
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    rec = _record(tmp_path / "demo.json")
    child = rec["child_pid"]
    call = rec["strace"]["unfinished_futex"]
    assert rec["outcome"] == "HANG" and call["pid"] == child
    assert call["line"].startswith(f"{child} ") and "futex(" in call["line"] and "FUTEX_WAIT" in call["line"]
    assert call["ended"] == "killed by SIGKILL"
    trace = Path(rec["strace"]["trace"])
    assert trace.parent == tmp_path / "logs" and trace.name.startswith("strace_module-level_") and trace.suffix == ".trace"
    text = trace.read_text(errors="replace")
    assert_header(text)
    assert call["line"] in text and f"{child} " in text and "+++ killed by SIGKILL +++" in text
    assert "unfinished futex call" in out.stdout
    pids = rec["pids"]
    assert_gone(pids["strace"], pids["demo_parent"], pids["child"])
    assert group_gone(pids["strace"])
    assert _chroma_left(tmp_path) == []


def test_ctrl_c_stops_the_child_and_cleans_up(tmp_path):
    # clear-system-cache hangs with several threads: no proof, so the demo waits the full timeout.
    live = LiveScript("demo_crash.py", "--variant", "clear-system-cache", "--timeout", "120", "--no-stacks",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    try:
        child = int(live.wait_for(r"forked child pid (\d+)").group(1))
        live.wait_for(r"waiting up to")
        time.sleep(0.5)
        assert alive(child)
        live.interrupt(signal.SIGINT)
        assert live.finish(timeout=30) == 130
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert "interrupted by SIGINT" in live.output()
    assert_gone(child)
    assert _chroma_left(tmp_path) == []


def test_parent_killed_with_sigkill_takes_the_child_with_it(tmp_path):
    live = LiveScript("demo_crash.py", "--variant", "clear-system-cache", "--timeout", "120", "--no-stacks",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    try:
        child = int(live.wait_for(r"forked child pid (\d+)").group(1))
        live.wait_for(r"waiting up to")
        live.interrupt(signal.SIGKILL)  # no cleanup code runs: PR_SET_PDEATHSIG must do it
        assert live.finish(timeout=30) == -signal.SIGKILL
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert_gone(child)


def test_ctrl_c_under_strace_stops_strace_and_everything_under_it(tmp_path):
    live = LiveScript("demo_crash.py", "--strace", "--variant", "clear-system-cache", "--timeout", "120",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    try:
        strace = int(live.wait_for(r"strace pid (\d+)").group(1))
        parent = int(live.wait_for(r"parent pid (\d+):", timeout=120).group(1))
        child = int(live.wait_for(r"forked child pid (\d+)", timeout=120).group(1))
        live.wait_for(r"waiting up to")
        live.interrupt(signal.SIGINT)
        assert live.finish(timeout=60) == 130
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert_gone(strace, parent, child)
    assert group_gone(strace)
    # one "interrupted" line, from the script the user ran (not a second one from the demo under strace)
    assert len(re.findall(r"interrupted by", live.output())) == 1, live.output()


def test_sigkill_under_strace_leaves_nothing_and_the_next_run_sweeps(tmp_path):
    """SIGKILL of `demo_crash.py --strace`: no clean-up code runs. strace dies with the script
    (PR_SET_PDEATHSIG), the demo under strace dies with strace (it sets PR_SET_PDEATHSIG itself),
    and its hung child dies with the demo. Every process of the run carries our tag, so this
    finds them even once reparented. The folders left behind are removed by the next run."""
    tag = f"test-sigkill-strace-{tmp_path.name}-{time.monotonic_ns()}"
    env = {RUN_ID_ENV: tag, **private_tmp(tmp_path)}
    live = LiveScript("demo_crash.py", "--strace", "--full-timeout", "--timeout", "60",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path, env=env)
    try:
        parent = int(live.wait_for(r"parent pid (\d+):", timeout=120).group(1))
        child = int(live.wait_for(r"forked child pid (\d+)", timeout=120).group(1))
        live.wait_for(r"waiting up to 60 s")
        tagged = wait_until(lambda: {p.pid for p in processes_of_run(tag)} >= {live.proc.pid, parent, child}, 10)
        assert tagged, "the run's processes should carry the tag"
        live.interrupt(signal.SIGKILL)
        assert live.finish(timeout=30) == -signal.SIGKILL
        left = wait_until(lambda: not processes_of_run(tag), timeout=5, interval=0.1)
        assert left, f"still alive 5 s after SIGKILL: {[(p.pid, p.cmdline()[:4]) for p in processes_of_run(tag)]}"
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
            live.proc.wait(5)
        sweep_run(tag)  # whatever a failure left: never leave it running
    # left behind by the kill: the demo's Chroma folder and the --strace temporary folder
    stale_chroma = _chroma_left(tmp_path)
    stale_tmp = list(Path(env["TMPDIR"]).iterdir())
    assert [f.name.startswith(f"demo-module-level-{parent}-") for f in stale_chroma] == [True]
    assert [f.name.startswith(f"forksafety-strace-{live.proc.pid}-") for f in stale_tmp] == [True]
    # the next run removes them, says so, and touches nothing else
    keep = [tmp_path / "chroma" / "demo-module-level-kept-abc", tmp_path / "chroma" / f"run-{dead_pid()}-x",
            tmp_path / "chroma" / f"demo-module-level-{os.getpid()}-live0"]
    for folder in keep:
        folder.mkdir()
    out = run_script("demo_crash.py", "--no-stacks", "--log-dir", tmp_path / "logs", tmp_path=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"removed 1 Chroma folder(s) left by killed demo runs under {tmp_path / 'chroma'}: " \
           f"{stale_chroma[0].name}" in out.stdout
    assert f"removed 1 temporary folder(s) left by killed --strace runs: {stale_tmp[0]}" in out.stdout
    assert sorted(_chroma_left(tmp_path)) == sorted(keep) and list(Path(env["TMPDIR"]).iterdir()) == []


@pytest.mark.parametrize("action,outcome,signal_name,detail", [
    ("raise", "ERROR", None, "RuntimeError: the store could not be opened"),
    ("trap", "CRASH", "SIGTRAP", "killed by SIGTRAP"),  # what the macOS child dies of
])
def test_child_errors_and_crashes_are_reported(tmp_path, monkeypatch, action, outcome, signal_name, detail):
    """ERROR and CRASH paths of DemoRun, with a child that fails on purpose (in-process fork)."""
    import os
    import resource

    from forksafety import demo
    from forksafety.settings import load_settings

    def failing_store(_run):  # runs in the forked child
        if action == "raise":
            raise RuntimeError("the store could not be opened")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGTRAP)

    monkeypatch.setattr(demo, "_child_store", failing_store)
    settings = load_settings(environ={"CHROMA_DIR": str(tmp_path / "chroma")})
    with demo.DemoRun("fixed", settings, demo.DemoOptions(timeout=30, stacks=False)) as run:
        rec = run.run()
    assert (rec.outcome.value, rec.signal) == (outcome, signal_name)
    assert detail in rec.detail and not rec.matched
    assert_gone(rec.child_pid)
    assert _chroma_left(tmp_path) == []
