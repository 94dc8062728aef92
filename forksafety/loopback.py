"""Services on 127.0.0.1: free ports, a port that is taken, Redis PING, a private
``redis-server`` tied to our life. Used by the Celery harness's broker and by the
runner matrix (mechanics: no product imports here).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BrokerError
from .watch import RUN_ID_ENV, make_temp_dir, pdeathsig_preexec, stop_processes, wait_until

START_REDIS_HELP = (
    "start Redis (`sudo apt-get install redis-server && redis-server --daemonize yes`, "
    "or `make redis` in Docker), set REDIS_URL, or use --broker auto / --broker filesystem"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    """True when binding 127.0.0.1:``port`` fails (another process holds it). Binds as the
    servers do, with SO_REUSEADDR: connections of an earlier server left in TIME_WAIT on
    the port (for a minute after it closed them) do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to 127.0.0.1:``port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(url: str, timeout: float = 1.0) -> str | None:
    """Return None when the Redis server at ``url`` answers PING within ``timeout``
    seconds, else the error text. Opens and closes its own connection."""
    import redis

    client = None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return str(exc) or type(exc).__name__
    finally:
        if client is not None:
            client.close()


@dataclass
class RedisServer:
    """A ``redis-server`` we started: its process, URL and data folder."""

    process: subprocess.Popen
    url: str
    workdir: Path

    def stop(self) -> None:
        """Stop the server (SIGTERM, 3 s, SIGKILL) and remove its folder. Idempotent, bounded."""
        import psutil

        try:
            stop_processes([psutil.Process(self.process.pid)], grace=3.0)
        except psutil.NoSuchProcess:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis_server(run_id: str, timeout: float = 5.0, env: dict[str, str] | None = None) -> RedisServer:
    """Start ``redis-server`` on a free 127.0.0.1 port, no persistence, in its own
    session, tagged ``FORKSAFETY_RUN_ID=run_id`` (plus ``env``), tied to our life
    (PR_SET_PDEATHSIG). Raises BrokerError when the binary is missing or the server
    does not answer PING within ``timeout`` seconds."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BrokerError("redis-server is not installed", START_REDIS_HELP)
    workdir = make_temp_dir("redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pdeathsig_preexec(),
        env={**os.environ, RUN_ID_ENV: run_id, **(env or {})}, start_new_session=True,
    )
    server = RedisServer(proc, f"redis://127.0.0.1:{port}/0", workdir)
    if not wait_until(lambda: proc.poll() is not None or redis_ping(server.url, 0.5) is None, timeout) \
            or proc.poll() is not None:
        server.stop()
        raise BrokerError(f"private redis-server on port {port} did not start", START_REDIS_HELP)
    return server
