"""End-to-end tests of scripts/gdb_attach_child.py and scripts/lldb_attach_child.py:
real debuggers attached to the real stuck child. Also the macOS lldb path (catch a
crash of a gated child), driven here with a child that raises SIGTRAP itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import types
from pathlib import Path

import pytest

from tests.demo_helpers import LiveScript, alive, assert_gone, assert_header, dead_pid, group_gone, run_script

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="attach mode runs on Linux")]
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed (apt-get install gdb)")
needs_lldb = pytest.mark.skipif(shutil.which("lldb") is None, reason="lldb is not installed (apt-get install lldb)")
FUTEX_NR = {"x86_64": 202, "aarch64": 98}


def _section(text: str, title_start: str) -> str:
    """The body of the first ``== title ==`` section whose title starts with ``title_start``."""
    match = re.search(rf"^== {re.escape(title_start)}[^\n]*==\n(.*?)(?=^== |\Z)", text, re.M | re.S)
    assert match, f"no section starting with {title_start!r}"
    return match.group(1)


@needs_gdb
def test_gdb_records_the_stuck_child(tmp_path):
    # left by a killed demo run (its pid is gone): removed first, and said so; a kept folder stays
    stale = tmp_path / "chroma" / f"demo-inherited-{dead_pid()}-abc123"
    kept = tmp_path / "chroma" / "demo-inherited-kept-abc123"
    for folder in (stale / "store", kept):
        folder.mkdir(parents=True)
    out = run_script("gdb_attach_child.py", "--json", tmp_path / "gdb.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"removed 1 Chroma folder(s) left by killed demo runs under {tmp_path / 'chroma'}: {stale.name}" \
        in out.stdout
    assert not stale.exists() and kept.is_dir()
    # the console names the innermost Python frame (not just where the stack came from)
    assert re.search(r"Python stack from (py-bt|pystack|py-spy); innermost frame: \w+ \(\S+\.py:\d+\)", out.stdout)
    assert "gdb recorded: exit 0, detached cleanly" in out.stdout
    rec = json.loads((tmp_path / "gdb.json").read_text())
    assert rec["capture_ok"] and rec["gdb"]["detached"] and rec["outcome"] == "HANG"
    log = Path(rec["log"])
    assert log.parent == tmp_path / "logs" and log.name.startswith("gdb_module-level_")
    text = log.read_text()
    assert_header(text)
    assert "LWP" in _section(text, "gdb: info threads")
    bt = _section(text, "gdb: thread apply all bt")
    frame0 = next(line for line in bt.splitlines() if line.startswith("#0 "))
    assert "syscall" in frame0 or "futex" in frame0  # the futex frame: glibc's syscall() doing futex(2)
    assert "chromadb_rust_bindings" in bt  # a frame of the chromadb Rust bindings
    python = text[text.index("== gdb: py-bt"):] if rec["gdb"]["python_stack_source"] == "py-bt" else \
        _section(text, "Python stack (")
    assert "add_documents" in python and "_child_main" in python  # the Python frame of the add call
    decoded = _section(text, "current syscall decoded from the registers")
    machine = rec["machine"]
    assert f"syscall number {FUTEX_NR[machine]}" in decoded and "= futex" in decoded
    assert "FUTEX_WAIT" in decoded and "expected value" in decoded and "address" in decoded
    assert re.search(r"value now\s+\d+", decoded)
    assert rec["gdb"]["syscall"]["futex"]["val"] == rec["gdb"]["syscall"]["value_now"]
    assert "detached cleanly" in _section(text, "after gdb detached")
    assert_gone(rec["pids"]["gdb"], rec["pids"]["child"])


@needs_gdb
def test_gdb_python_stack_fallback_to_pystack(tmp_path):
    out = run_script("gdb_attach_child.py", "--python-stack", "pystack", "--json", tmp_path / "gdb.json",
                     "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "gdb.json").read_text())
    assert rec["gdb"]["python_stack_source"] == "pystack"
    text = Path(rec["log"]).read_text()
    assert "py-bt" not in " ".join(rec["gdb"]["command"])
    stack = _section(text, "Python stack (pystack")
    assert "add_documents" in stack and "chromadb_rust_bindings" in stack
    assert_gone(rec["pids"]["gdb"], rec["pids"]["child"])


@needs_gdb
def test_gdb_ctrl_c_leaves_no_gdb_and_no_child(tmp_path):
    # an extra gdb command that keeps gdb busy (attached) for a minute
    live = LiveScript("gdb_attach_child.py", "--command", "python import time; time.sleep(60)",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    try:
        child = int(live.wait_for(r"forked child pid (\d+)").group(1))
        gdb = int(live.wait_for(r"gdb pid (\d+)").group(1))
        assert alive(gdb)
        live.interrupt(signal.SIGINT)
        assert live.finish(timeout=30) == 130
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert "interrupted by SIGINT" in live.output()
    assert_gone(gdb, child)
    assert group_gone(gdb)


@needs_gdb
def test_ptrace_refused_is_one_clear_error(tmp_path):
    fake = tmp_path / "gdb"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'GNU gdb (fake)'; exit 0; }\n"
                    "echo 'Could not attach to process.  If your uid matches the uid of the target'\n"
                    "echo 'ptrace: Operation not permitted.'\nexit 1\n")
    fake.chmod(0o755)
    out = run_script("gdb_attach_child.py", "--gdb", fake, "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    for fix in ("ptrace is not permitted", "root", "kernel.yama.ptrace_scope", "SYS_PTRACE"):
        assert fix in out.stderr
    child = int(re.search(r"forked child pid (\d+)", out.stdout).group(1))
    assert_gone(child)


@pytest.mark.parametrize("script,args,message", [
    ("gdb_attach_child.py", ["--gdb", "/nonexistent/gdb"], "gdb is not installed"),
    ("lldb_attach_child.py", ["--lldb", "/nonexistent/lldb"], "lldb is not installed"),
    ("gdb_attach_child.py", ["--variant", "fixed"], "no stuck child to attach to"),
    ("lldb_attach_child.py", ["--timeout", "0"], "must be a positive number"),
    ("gdb_attach_child.py", ["--variant", "nope"], "unknown variant 'nope'"),
    # a debugger that cannot be started is a set-up error, said on the console with its reason
    ("gdb_attach_child.py", ["--gdb", "{file}"], "could not run gdb ({file}): Permission denied"),
    ("lldb_attach_child.py", ["--lldb", "{garbage}"], "could not run lldb ({garbage}): Exec format error"),
    ("gdb_attach_child.py", ["--timeout", "1e308"], "must be at most 3600 seconds"),
    ("gdb_attach_child.py", ["--debugger-timeout", "0.5"], "must be at least 1 seconds"),
    ("lldb_attach_child.py", ["--variant", "inherited", "--variant", "other-dir"], "--variant given twice"),
    ("gdb_attach_child.py", ["--json", ""], "an empty path is not allowed"),
    ("gdb_attach_child.py", ["--log-dir", ""], "an empty path is not allowed"),
])
def test_debugger_set_up_errors_exit_2(tmp_path, script, args, message):
    (tmp_path / "file").write_text("not a program")
    (tmp_path / "garbage").write_bytes(b"\x00\x01 not a program")
    (tmp_path / "garbage").chmod(0o755)
    args = [a.replace("{file}", str(tmp_path / "file")).replace("{garbage}", str(tmp_path / "garbage")) for a in args]
    message = message.replace("{file}", str(tmp_path / "file")).replace("{garbage}", str(tmp_path / "garbage"))
    out = run_script(script, *args, tmp_path=tmp_path, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "forked child" not in out.stdout  # nothing was started


def test_a_hanging_debugger_is_bounded_by_debugger_timeout(tmp_path):
    """A debugger that answers --version but then hangs: stopped after --debugger-timeout
    (not a fixed 60 s), said on the console, never called a clean detach; nothing left."""
    fake = tmp_path / "gdb"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'GNU gdb (fake)'; exit 0; }\nsleep 120\n")
    fake.chmod(0o755)
    out = run_script("gdb_attach_child.py", "--gdb", fake, "--debugger-timeout", "2", "--python-stack", "py-bt",
                     "--log-dir", tmp_path / "logs", tmp_path=tmp_path, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "gdb INCOMPLETE: it did not finish within 2 s (--debugger-timeout): stopped it" in out.stdout
    assert "detached cleanly" not in out.stdout and "after gdb detached" not in out.stdout
    gdb = int(re.search(r"gdb pid (\d+)", out.stdout).group(1))
    child = int(re.search(r"forked child pid (\d+)", out.stdout).group(1))
    assert_gone(gdb, child)
    assert group_gone(gdb)  # the fake's sleep too


def test_debugger_timeout_is_documented(tmp_path):
    for script in ("gdb_attach_child.py", "lldb_attach_child.py"):
        out = run_script(script, "--help", tmp_path=tmp_path, timeout=60)
        assert "--debugger-timeout SECONDS" in out.stdout and "(default 60;" in out.stdout


@needs_lldb
def test_lldb_records_the_stuck_childs_backtrace(tmp_path):
    out = run_script("lldb_attach_child.py", "--json", tmp_path / "lldb.json", "--log-dir", tmp_path / "logs",
                     tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "lldb.json").read_text())
    assert rec["capture_ok"] and rec["lldb"]["detached"]
    log = Path(rec["log"])
    assert log.name.startswith("lldb_module-level_")
    text = log.read_text()
    assert_header(text)
    assert f"tid = {rec['child_pid']}" in _section(text, "lldb: thread list")
    bt = _section(text, "lldb: bt all")
    assert "frame #0:" in bt and "syscall" in bt.splitlines()[1]
    assert "chromadb_rust_bindings" in bt and "libpython" in bt
    assert "= futex" in _section(text, "current syscall decoded from the registers")
    assert "add_documents" in _section(text, "Python stack (")
    assert_gone(rec["pids"]["lldb"], rec["pids"]["child"])


@needs_lldb
def test_lldb_ctrl_c_leaves_no_lldb_and_no_child(tmp_path):
    live = LiveScript("lldb_attach_child.py", "--command", "platform shell sleep 60",
                      "--log-dir", tmp_path / "logs", tmp_path=tmp_path)
    try:
        child = int(live.wait_for(r"forked child pid (\d+)").group(1))
        lldb = int(live.wait_for(r"lldb pid (\d+)").group(1))
        live.interrupt(signal.SIGINT)
        assert live.finish(timeout=30) == 130
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    assert_gone(lldb, child)
    assert group_gone(lldb)  # lldb's own shell child (the sleep) too


@needs_lldb
def test_lldb_catch_mode_records_a_crash(tmp_path, monkeypatch):
    """The macOS path: lldb attaches to the gated child before it runs, lets it go and
    catches its crash. The child here raises SIGTRAP itself (the Linux child hangs)."""
    from forksafety import cli_attach, demo
    from forksafety.demo import DemoOptions, DemoRun
    from forksafety.outcome import Outcome
    from forksafety.settings import load_settings

    def trap(_run):  # runs in the forked child, after the gate opened
        os.kill(os.getpid(), signal.SIGTRAP)

    monkeypatch.setattr(demo, "_child_store", trap)
    settings = load_settings(environ={"CHROMA_DIR": str(tmp_path / "chroma")})
    args = types.SimpleNamespace(timeout=30.0, debugger_timeout=30.0, tool_path="lldb", extra=[],
                                 log_dir=tmp_path / "logs")
    started = []
    with DemoRun("fixed", settings, DemoOptions(gate=True, stacks=False)) as run:
        run.start()
        child = run.child_pid
        rec, cap, log, code = cli_attach._catch(run, args, started.append, "lldb_attach_child.py")
    assert code == 0, cap.output
    assert rec.outcome is Outcome.CRASH and rec.signal == "SIGTRAP"
    text = log.read_text()
    assert_header(text)
    assert "stop reason" in text and "frame #0:" in _section(text, "lldb: bt all")
    assert "rip = " in _section(text, "lldb: register read")
    assert_gone(child, *started)
    assert not (tmp_path / "chroma").exists() or list((tmp_path / "chroma").iterdir()) == []


@needs_gdb
def test_gdb_killed_mid_run_is_not_called_a_clean_detach(tmp_path):
    """gdb killed while it runs (here by a shell command it runs itself: kill -9 of gdb) never
    ran its detach: the kernel detached the child. Said as such, exit 1, the record says so;
    gdb and the child are gone."""
    out = run_script("gdb_attach_child.py", "--command", "shell kill -9 $PPID", "--python-stack", "py-bt",
                     "--json", tmp_path / "gdb.json", "--log-dir", tmp_path / "logs", tmp_path=tmp_path, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "gdb INCOMPLETE: killed by SIGKILL (exit -9) before it detached" in out.stdout, out.stdout
    assert "detached cleanly" not in out.stdout
    log = Path(re.search(r"^log: (.+)$", out.stdout, re.M).group(1)).read_text()
    assert "gdb did not detach: it was killed by SIGKILL" in _section(log, "after gdb detached")
    assert "detached cleanly" not in log
    record = json.loads((tmp_path / "gdb.json").read_text())
    assert record["gdb"]["exit_code"] == -9 and not record["gdb"]["detached"] and not record["capture_ok"]
    gdb = int(re.search(r"gdb pid (\d+)", out.stdout).group(1))
    child = int(re.search(r"forked child pid (\d+)", out.stdout).group(1))
    assert_gone(gdb, child)
