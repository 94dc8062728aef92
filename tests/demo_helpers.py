"""Helpers for the demo and debugger end-to-end tests (not a test module).

Every wait is bounded; only the pids our own scripts report are checked, so
these tests can run next to other suites and other Python processes.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
HEADER = ("# forksafety ", "# command: ", "# platform: ", "# python: ", "# versions: ", "# time: ")


def script_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment with a private CHROMA_DIR under ``tmp_path`` and unbuffered output,
    plus ``extra`` (e.g. a private TMPDIR, or a FORKSAFETY_RUN_ID tag every process inherits)."""
    env = dict(os.environ)
    env["CHROMA_DIR"] = str(tmp_path / "chroma")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("FORKSAFETY_ENV_FILE", None)
    env.update(extra or {})
    return env


def private_tmp(tmp_path: Path) -> dict[str, str]:
    """A private TMPDIR under ``tmp_path`` (tempfile honours it), to see what a run leaves there."""
    folder = tmp_path / "tmp"
    folder.mkdir(exist_ok=True)
    return {"TMPDIR": str(folder)}


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def run_script(name: str, *args: object, tmp_path: Path, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/<name> args...`` to the end (bounded by ``timeout`` seconds)."""
    cmd = [sys.executable, str(SCRIPTS / name), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=script_env(tmp_path, env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def alive(pid: int | None) -> bool:
    """True when ``pid`` runs (a zombie is dead: only its exit status is left)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(*pids: int | None, within: float = 5.0) -> None:
    """Assert every pid is gone (waiting up to ``within`` seconds for the kernel)."""
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    assert not left, f"processes still alive: {[(p, psutil.Process(p).cmdline()) for p in left]}"


def group_gone(pgid: int) -> bool:
    """True when no process is left in process group ``pgid`` (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    members = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return not members


def assert_header(text: str) -> None:
    """A crash_dumps file starts with the header: title, command, platform, python, versions, time."""
    lines = text.splitlines()
    for prefix, line in zip(HEADER, lines):
        assert line.startswith(prefix), f"header line {line!r} should start with {prefix!r}"
    assert "x86_64" in lines[2] or "aarch64" in lines[2] or "arm64" in lines[2]
    assert "chromadb " in lines[4] and "langchain-chroma " in lines[4]


class LiveScript:
    """A script run in the background whose output lines are read as they come."""

    def __init__(self, name: str, *args: object, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, str(SCRIPTS / name), *map(str, args)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=script_env(tmp_path, env), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        """Read lines until one matches ``pattern`` (bounded); returns the match."""
        regex = re.compile(pattern)
        for line in self.lines:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if m := regex.search(line):
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n" + "\n".join(self.lines))

    def interrupt(self, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` to the script (only to it, as a test runner would)."""
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 30) -> int:
        """Wait (bounded) for the script to exit; return its exit code. Kills it on timeout."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("the script did not exit in time:\n" + "\n".join(self.lines)) from None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # drain the rest of its output
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)
