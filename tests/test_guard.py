"""forksafety.guard: the at-fork warning in real forks, strict refusal, and the
Celery integration with a real prefork worker (celery_examples/tasks_pool_test.py,
unchanged, with FORKSAFETY_GUARD set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent

# A Python thread, then the guard, then a real fork: what each mode does.
FORK_SCRIPT = """
import os, sys, threading
import forksafety.guard as guard
mode, with_thread, forks = sys.argv[1], sys.argv[2] == "thread", int(sys.argv[3])
if mode == "log":
    import logging
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(name)s: %(message)s")
guard.install(mode)
stop = threading.Event()
if with_thread:
    threading.Thread(target=stop.wait, name="background-waiter", daemon=True).start()
for _ in range(forks):
    try:
        pid = os.fork()
    except guard.ForkUnsafeError as exc:
        print("REFUSED", exc)
        try:
            os.wait()
        except ChildProcessError:
            print("no child was created")
        sys.exit(3)
    if pid == 0:
        print("child ran", flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
print("parent done")
"""


def run_python(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
               timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_warn_mode_warns_visibly_at_every_fork_naming_the_thread():
    done = run_python(FORK_SCRIPT, "warn", "thread", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("child ran") == 2
    assert done.stderr.count("ForkSafetyWarning: forksafety: fork() in pid") == 2  # shown by default, each time
    assert "1 x background-waiter (Python thread running threading.Event.wait, started at <string>:11" in done.stderr
    assert "Fix (one of):" in done.stderr


def test_no_warning_without_threads():
    done = run_python(FORK_SCRIPT, "warn", "none", "1")
    assert done.returncode == 0 and "child ran" in done.stdout
    assert "ForkSafetyWarning" not in done.stderr


def test_log_mode_emits_a_log_record():
    done = run_python(FORK_SCRIPT, "log", "thread", "1")
    assert done.returncode == 0, done.stderr
    assert "LOG WARNING forksafety.guard: forksafety: fork() in pid" in done.stderr
    assert "background-waiter" in done.stderr
    assert "ForkSafetyWarning" not in done.stderr


def test_strict_mode_refuses_to_fork_an_unsafe_process():
    done = run_python(FORK_SCRIPT, "strict", "thread", "1")
    assert done.returncode == 3, done.stderr
    assert "REFUSED forksafety: os.fork() refused in pid" in done.stdout
    assert "background-waiter" in done.stdout
    assert "no child was created" in done.stdout and "child ran" not in done.stdout


def test_strict_mode_lets_a_safe_process_fork():
    done = run_python(FORK_SCRIPT, "strict", "none", "1")
    assert done.returncode == 0, done.stderr
    assert "child ran" in done.stdout and "parent done" in done.stdout


def test_strict_mode_also_stops_multiprocessing_fork():
    done = run_python("""
        import multiprocessing, threading
        import forksafety.guard as guard
        guard.install("strict")
        threading.Thread(target=threading.Event().wait, name="holder", daemon=True).start()
        try:
            multiprocessing.get_context("fork").Process(target=print).start()
        except guard.ForkUnsafeError as exc:
            print("REFUSED", "holder" in str(exc))
    """)
    assert done.stdout.strip() == "REFUSED True", done.stderr


def test_unknown_modes_are_refused_with_the_fix():
    done = run_python("""
        import forksafety.guard as guard
        from forksafety.errors import SettingsError
        for call in (lambda: guard.install("loud"), lambda: guard.install_celery(object(), "warn")):
            try:
                call()
            except SettingsError as exc:
                print(exc)
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "unknown guard mode 'loud': use one of warn, log, strict"
    assert lines[1].startswith("unknown Celery guard mode 'warn': set FORKSAFETY_GUARD to one of log, strict")


def test_make_app_installs_the_celery_guard_from_the_environment():
    done = run_python("""
        from forksafety.app import make_app
        from forksafety.errors import SettingsError
        print(getattr(make_app("a", {}), "forksafety_guard", None))
        print(make_app("b", {"FORKSAFETY_GUARD": "strict"}).forksafety_guard)
        try:
            make_app("c", {"FORKSAFETY_GUARD": "loud"})
        except SettingsError as exc:
            print("error:", exc.message)
    """)
    assert done.stdout.splitlines() == ["None", "strict", "error: unknown Celery guard mode 'loud'"], done.stderr


@pytest.mark.e2e
def test_warn_names_chromadbs_native_threads_in_a_real_fork(tmp_path):
    done = run_python("""
        import os
        import forksafety.cases.chroma_store  # ChromaDB store at import, as users write it
        import forksafety.guard as guard
        guard.install("warn")
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    """, env={"FORKSAFETY_CASE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "ForkSafetyWarning" in done.stderr
    assert "x tokio-rt-worker (Tokio runtime worker (Rust async runtime), e.g. ChromaDB's Rust client" in done.stderr
    assert "x sqlx-sqlite-wor" in done.stderr
    assert "OpenBLAS" not in done.stderr  # handled by OpenBLAS itself: not blamed


# ------------------------------------------------------------------ Celery, a real prefork worker
def _worker(redis_url: str, tmp_path: Path, guard: str, extra_env: dict[str, str] | None = None):
    queue = f"fs-guard-{uuid.uuid4().hex[:8]}"
    log = tmp_path / f"worker_{guard}.log"
    ready = tmp_path / f"ready_{guard}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "FORKSAFETY_QUEUE": queue,
           "CHROMA_DIR": str(tmp_path / f"chroma_{guard}"), "FORKSAFETY_READY_FILE": str(ready),
           "FORKSAFETY_GUARD": guard, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "celery", "-A", "celery_examples.tasks_pool_test", "worker", "--pool", "prefork",
           "--concurrency", "1", "--loglevel", "DEBUG", "--without-gossip", "--without-mingle",
           "--without-heartbeat", "--hostname", f"{queue}@%h", "--queues", queue]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log, ready


def _wait(proc: subprocess.Popen, ready: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return "ready"
        if proc.poll() is not None:
            return "exited"
        time.sleep(0.1)
    return "timeout"


def _stop(proc: subprocess.Popen) -> None:
    """Stop the worker and its pool children (its own process group), bounded."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for sig, wait in ((signal.SIGQUIT, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.e2e
def test_celery_log_mode_names_the_threads_and_the_fix_before_the_pool_forks(redis_url, tmp_path):
    proc, log, ready = _worker(redis_url, tmp_path, "log")
    try:
        state = _wait(proc, ready)
    finally:
        _stop(proc)
    text = log.read_text()
    assert state == "ready", text[-3000:]  # log mode warns, and the worker still starts
    start = text.index("ERROR/MainProcess] forksafety: the prefork pool is about to fork its children")
    message = text[start:text.index("\n[", start)]
    assert "x tokio-rt-worker (Tokio runtime worker" in message and "x sqlx-sqlite-wor" in message
    assert "celery.signals.worker_process_init" in message
    assert "--pool threads or --pool solo" in message
    assert "POOL_START_METHOD=spawn" in message and 'use_start_method(app, "spawn")' in message
    # verified order: the check ran before Celery started the Pool bootstep (which forks)
    assert start < text.index("| Worker: Starting Pool")


@pytest.mark.e2e
def test_celery_strict_mode_refuses_to_start_the_prefork_pool(redis_url, tmp_path):
    proc, log, ready = _worker(redis_url, tmp_path, "strict")
    started = time.monotonic()
    try:
        state = _wait(proc, ready, timeout=90)
        code = proc.wait(timeout=30) if state == "exited" else None
    finally:
        _stop(proc)
    text = log.read_text()
    assert state == "exited", text[-3000:]
    assert code == 1
    assert time.monotonic() - started < 90
    assert "CRITICAL/MainProcess] forksafety: refusing to start the prefork pool (FORKSAFETY_GUARD=strict)" in text
    assert "x tokio-rt-worker" in text and "POOL_START_METHOD=spawn" in text
    assert "Starting Pool" not in text  # no child was ever forked


@pytest.mark.e2e
def test_celery_strict_mode_accepts_the_spawn_start_method(redis_url, tmp_path):
    proc, log, ready = _worker(redis_url, tmp_path, "strict", {"POOL_START_METHOD": "spawn"})
    try:
        state = _wait(proc, ready)
    finally:
        _stop(proc)
    text = log.read_text()
    assert state == "ready", text[-3000:]
    assert "forksafety: pool children are started with spawn: nothing is inherited through fork()" in text
