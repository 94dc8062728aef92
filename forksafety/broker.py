"""Which broker to use and how to reach it: the user's Redis, a private
``redis-server`` we start on a free loopback port, or kombu's filesystem transport.

Every run gets its own key prefix (kombu's and Celery's ``global_keyprefix``
transport option) so that ``Broker.cleanup()`` can delete exactly the keys the
run made and nothing else on the user's Redis.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BrokerError
from .settings import DEFAULT_REDIS_URL, redact_url
from .loopback import START_REDIS_HELP, free_port, redis_ping, start_redis_server  # noqa: F401 - names of this module
from .watch import make_temp_dir, stop_processes

MODES = ("auto", "redis", "filesystem")


@dataclass
class Broker:
    """A broker a run can use.

    kind: "redis" (the user's server), "redis-private" (ours) or "filesystem".
    url: broker URL; backend: result backend URL.
    key_prefix: prefix of every key this run writes (Redis kinds).
    """

    kind: str
    url: str
    backend: str
    key_prefix: str = ""
    data_folder: Path | None = None
    process: subprocess.Popen | None = None
    _owned_dir: Path | None = field(default=None, repr=False)
    skipped: str = ""  # auto mode: why the configured REDIS_URL was not used ("" when it was, or not tried)

    def describe(self) -> str:
        """Human-readable one-liner (password redacted); in auto mode, also why the
        configured Redis was passed over."""
        if self.kind == "filesystem":
            text = f"filesystem (kombu filesystem transport in {self.data_folder})"
        else:
            where = "private redis-server we started" if self.kind == "redis-private" else "REDIS_URL"
            text = f"redis {redact_url(self.url)} ({where})"
        return f"{text}; {self.skipped}" if self.skipped else text

    def transport_options(self, queue: str) -> dict:
        """kombu transport options for a run on ``queue``."""
        if self.kind == "filesystem":
            assert self.data_folder is not None
            folder = self.data_folder / queue
            for sub in ("in", "processed", "control"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            return {
                "data_folder_in": str(folder / "in"),
                "data_folder_out": str(folder / "in"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),  # default: ./control in the cwd
                "store_processed": False,
            }
        return {"global_keyprefix": f"{self.key_prefix}{queue}:"}

    def backend_for(self, queue: str) -> tuple[str, dict]:
        """Result backend URL and its transport options for ``queue``."""
        if self.kind == "filesystem":
            assert self.data_folder is not None
            results = self.data_folder / queue / "results"
            results.mkdir(parents=True, exist_ok=True)
            return f"file://{results}", {}
        return self.backend, {"global_keyprefix": f"{self.key_prefix}{queue}:"}

    def worker_env(self, queue: str) -> dict[str, str]:
        """Environment variables that ``forksafety.app.make_app`` reads in the worker."""
        backend, backend_options = self.backend_for(queue)
        return {
            "FORKSAFETY_BROKER_URL": self.url,
            "FORKSAFETY_BROKER_OPTIONS": json.dumps(self.transport_options(queue)),
            "FORKSAFETY_RESULT_BACKEND": backend,
            "FORKSAFETY_BACKEND_OPTIONS": json.dumps(backend_options),
            "FORKSAFETY_QUEUE": queue,
        }

    def lost(self) -> str | None:
        """None while the broker answers; else why not (Redis: PING within 2 s).
        The filesystem broker is lost when its folder is gone."""
        if self.kind == "filesystem":
            return None if self.data_folder and self.data_folder.is_dir() else \
                f"the filesystem broker's folder {self.data_folder} disappeared during the run"
        error = redis_ping(self.url, timeout=2.0)
        return None if error is None else f"Redis at {redact_url(self.url)} stopped answering during the run ({error})"

    def run_keys(self) -> list[str]:
        """Keys on Redis under this run's prefix (empty for the filesystem broker)."""
        if self.kind == "filesystem":
            return []
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return [k.decode() for k in client.scan_iter(match=f"{self.key_prefix}*", count=500)]
        finally:
            client.close()

    def cleanup(self) -> None:
        """Delete this run's keys (Redis) or folder (filesystem); stop our redis-server.
        Bounded: Redis calls time out after 2 s, the server gets 3 s to exit."""
        try:
            if self.kind in ("redis", "redis-private"):
                import redis

                try:
                    client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
                    keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=500))
                    for i in range(0, len(keys), 500):
                        client.delete(*keys[i : i + 500])
                    client.close()
                except Exception:  # noqa: BLE001 - the server may be gone; nothing left to delete
                    pass
        finally:
            if self.process is not None:
                import psutil

                try:
                    stop_processes([psutil.Process(self.process.pid)], grace=3.0)
                except psutil.NoSuchProcess:
                    pass
                self.process.wait(timeout=5)
                self.process = None
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)
                self._owned_dir = None


def start_private_redis(run_id: str, timeout: float = 5.0) -> Broker:
    """Start ``redis-server`` on a free loopback port (``loopback.start_redis_server``)
    as this run's broker. Raises BrokerError when it does not answer in ``timeout`` s."""
    server = start_redis_server(run_id, timeout)
    return Broker("redis-private", server.url, server.url, key_prefix=f"forksafety:{run_id}:",
                  process=server.process, _owned_dir=server.workdir)


def filesystem_broker(run_id: str) -> Broker:
    """kombu's filesystem transport in a new temporary folder (removed by cleanup)."""
    # the creating pid in the name, whatever the run id looks like: a killed run's folder is found by it
    folder = make_temp_dir("fsbroker", run_id)
    return Broker("filesystem", "filesystem://", "", data_folder=folder, _owned_dir=folder)


def resolve_broker(mode: str, redis_url: str, run_id: str | None = None) -> Broker:
    """Pick the broker for ``mode`` (one of MODES).

    auto: ``redis_url`` if it answers PING within 1 s, else a private redis-server
    if the binary exists, else the filesystem transport.
    redis: ``redis_url`` or BrokerError within 5 s (the message has the URL and the fix).
    filesystem: the filesystem transport.
    """
    run_id = run_id or f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    prefix = f"forksafety:{run_id}:"
    if mode == "filesystem":
        return filesystem_broker(run_id)
    if mode == "redis":
        error = redis_ping(redis_url, timeout=4.0)
        if error is not None:
            raise BrokerError(f"Redis at {redact_url(redis_url)} is not reachable ({error})", START_REDIS_HELP)
        return Broker("redis", redis_url, redis_url, key_prefix=prefix)
    if mode != "auto":
        raise BrokerError(f"unknown broker {mode!r}", f"use one of {', '.join(MODES)}")
    error = redis_ping(redis_url, timeout=1.0)
    if error is None:
        return Broker("redis", redis_url, redis_url, key_prefix=prefix)
    # Say why the configured Redis was passed over only when the user set one (REDIS_URL in
    # the environment or .env): the default URL not answering is the normal case on a laptop.
    skipped = (f"REDIS_URL {redact_url(redis_url)} did not answer in 1 s ({error})"
               if redis_url != DEFAULT_REDIS_URL else "")
    broker = None
    if shutil.which("redis-server"):
        try:
            broker = start_private_redis(run_id)
        except BrokerError:
            pass
    broker = broker or filesystem_broker(run_id)
    broker.skipped = skipped
    return broker
