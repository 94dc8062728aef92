"""``forksafety inspect PID`` on real processes: a hung Celery prefork child from the
harness (ChromaDB created at module level), healthy processes (sleeping with a
timeout, computing, waiting on a socket), a pid that does not exist and one that
cannot be traced. Timing is the benchmark's (benchmarks/tool.py), not a test's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from forksafety import procinfo
from forksafety.watch import is_proven_deadlock, wait_until
from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def inspect(*args, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PYTHON, "-m", "forksafety", "inspect", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def hung_pool_child(redis_url, tmp_path):
    """(child pid, worker pid) of a real prefork pool child stuck in the bug's task
    (forksafety.harness.hung_pool_child: the worker is stopped on every path)."""
    from forksafety.broker import resolve_broker
    from forksafety.harness import hung_pool_child
    from forksafety.settings import load_settings

    broker = resolve_broker("redis", redis_url)
    settings = load_settings(environ={"CHROMA_DIR": str(tmp_path / "chroma")}, env_file=tmp_path / "none")
    try:
        with hung_pool_child(broker, settings, tmp_path / "worker") as pids:
            yield pids
    finally:
        broker.cleanup()


@pytest.mark.e2e
def test_hung_prefork_child_is_a_proven_deadlock_with_the_lost_tokio_threads(hung_pool_child, tmp_path):
    child, worker = hung_pool_child
    before = procinfo.snapshot(child)
    out = inspect(child, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert f"pid {child} (" in text and "DEADLOCK-PROVEN" in text
    assert f"parent pid {worker} has " in text and "lost in the fork: " in text and "tokio-rt-worker x" in text
    assert "futex: futex(" in text and "FUTEX_WAIT_BITSET_PRIVATE" in text and "timeout NULL (waits forever)" in text
    assert "fix (tokio-rt-worker: Tokio runtime worker (Rust async runtime)): create the client/store after " \
           "the fork (Celery: in a worker_process_init handler)" in text
    assert "stacks: py-spy: recorded" in text and "innermost Python frame: " in text
    (dump,) = (tmp_path / "crash_dumps").glob(f"inspect_pid{child}_*.log")
    assert str(dump.relative_to(tmp_path)) in text
    body = dump.read_text()
    assert body.startswith("# forksafety inspect of pid") and "# versions: " in body
    assert "== verdict ==\ndeadlock-proven: " in body and "== threads: parent vs inspected process ==" in body
    assert "tokio-rt-worker" in body and "== py-spy: " in body and "== current syscall (futex) ==" in body
    # never stopped or changed: still there, still in the same futex wait
    after = procinfo.snapshot(child)
    assert psutil.pid_exists(child) and is_proven_deadlock(after)
    assert after.syscall.futex["uaddr"] == before.syscall.futex["uaddr"]


@pytest.fixture
def healthy(tmp_path):
    """Processes that are not stuck: a sleep (timed wait), a busy loop, a server waiting in accept()."""
    procs = {
        "sleeping": subprocess.Popen(["sleep", "60"]),
        "computing": subprocess.Popen([PYTHON, "-c", "while True: pass"]),
        "socket": subprocess.Popen([PYTHON, "-c", "import socket; s = socket.socket(); "
                                    "s.bind(('127.0.0.1', 0)); s.listen(); print('up', flush=True); s.accept()"],
                                   stdout=subprocess.PIPE, text=True),
    }
    try:
        assert procs["socket"].stdout.readline().strip() == "up"
        yield procs
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=10)


def test_healthy_processes_are_not_stuck_with_the_reason(healthy, tmp_path):
    out = inspect(*(p.pid for p in healthy.values()), "--stacks", "never", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    blocks = out.stdout.split("\npid ")
    assert len(blocks) == 3 and all("NOT-STUCK" in b.splitlines()[0] for b in blocks)
    assert "waits with a timeout in clock_nanosleep" in blocks[0] or "waits with a timeout in nanosleep" in blocks[0]
    assert "why: it is running: " in blocks[1]
    assert "why: it is idle, waiting for input in accept" in blocks[2] and "socket:[" in blocks[2]
    for p in healthy.values():
        assert p.poll() is None  # untouched


def test_two_threads_waiting_for_each_other_forever_are_stalled(tmp_path):
    # both threads in an untimed futex wait, no CPU: not provable from one look (two threads), so the
    # 'stalled' rule decides it over the window
    code = ("import threading; e = threading.Event(); threading.Thread(target=e.wait).start(); "
            "print('up', flush=True); e.wait()")
    proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        out = inspect(proc.pid, "--window", "0.5", "--stacks", "never", cwd=tmp_path)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"pid {proc.pid} (python" in out.stdout and "STALLED" in out.stdout
    assert "every thread has waited with no timeout and no CPU progress" in out.stdout


def test_missing_pid_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    out = inspect(proc.pid, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"python -m forksafety inspect: error: no process has pid {proc.pid}: "
                                       "give the pid of a running process "
                                       "(ps -eo pid,ppid,cmd | grep celery: a pool child's ppid is the worker's main process)"]


def test_a_kernel_thread_cannot_be_traced_one_line_exit_2(tmp_path):
    kthreadd = psutil.Process(2)
    if kthreadd.name() != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (a container's own pid namespace)")
    out = inspect(2, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "pid 2 (kthreadd) is a kernel thread" in out.stderr


def test_root_refused_by_the_sandbox_is_told_so_not_to_run_as_root(tmp_path):
    """As root, where the container still refuses /proc/1/syscall, the message must not
    tell root to run as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        Path("/proc/1/syscall").read_bytes()
        pytest.skip("root may read /proc/1/syscall here: nothing refuses it")
    except PermissionError:
        pass
    out = inspect(1, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "even root may not trace pid 1" in out.stderr
    assert "sudo" not in out.stderr


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: PID"),
    (["abc"], "argument PID: 'abc' is not an integer"),
    (["1", "--window", "0"], "argument --window: '0' must be a positive number of seconds"),
])
def test_bad_usage_is_one_line_exit_2(args, message, tmp_path):
    out = inspect(*args, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and message in out.stderr
