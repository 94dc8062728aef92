"""Shared fixtures: a private real Redis server, the runner CLI, leftover-process checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RUNNER = REPO / "celery_examples" / "run_test.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server of our own on a free loopback port, stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: make check installs it (scripts/system_deps.sh), or apt-get install redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("could not start a private redis-server for the tests")
            time.sleep(0.05)
    client.close()
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def redis_keys(url: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 180,
            script: Path = RUNNER) -> subprocess.CompletedProcess:
    """Run a CLI of the repository as a user would, with a bound."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, str(script), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has ``name=value`` (children inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(name) == value and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def processes_with_env_prefix(name: str, prefix: str) -> list[psutil.Process]:
    """Live processes whose environment variable ``name`` starts with ``prefix``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (proc.environ().get(name) or "").startswith(prefix) and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found
