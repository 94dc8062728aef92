"""The Celery app factory shared by the task modules, the runner and the tests.

The runner passes the broker and queue through environment variables (see
``forksafety.broker.Broker.worker_env``); a user who starts a worker by hand
gets ``REDIS_URL`` as broker and result backend.

Importing this module or calling ``make_app`` starts no thread and opens no
connection (Celery connects lazily).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery, signals

from .watch import set_parent_death_signal

READY_FILE_ENV = "FORKSAFETY_READY_FILE"
DEFAULT_QUEUE = "forksafety"


def make_app(main: str, environ: dict[str, str] | None = None) -> Celery:
    """Return a Celery app configured from ``environ`` (default ``os.environ``).

    Settings: ``task_track_started`` (the STARTED state carries the pool child's
    pid), prefetch 1, JSON only, no remote control (the runner needs none), and
    the broker / backend / queue / key prefix chosen by the runner.
    """
    env = os.environ if environ is None else environ
    from .settings import DEFAULT_REDIS_URL

    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    app = Celery(main)
    app.conf.update(
        broker_url=env.get("FORKSAFETY_BROKER_URL") or redis_url,
        result_backend=env.get("FORKSAFETY_RESULT_BACKEND") or redis_url,
        broker_transport_options=json.loads(env.get("FORKSAFETY_BROKER_OPTIONS") or "{}"),
        result_backend_transport_options=json.loads(env.get("FORKSAFETY_BACKEND_OPTIONS") or "{}"),
        task_default_queue=env.get("FORKSAFETY_QUEUE") or DEFAULT_QUEUE,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        worker_hijack_root_logger=True,
    )
    from .startmethod import start_method_from_env

    start_method_from_env(app, env)
    # forksafety guard (issue 7): FORKSAFETY_GUARD=log|strict makes the worker's main
    # process check, just before the prefork pool forks, for threads its children would
    # lose (e.g. ChromaDB's tokio-rt-worker) and log them with the fix; strict also
    # refuses to start the prefork pool. Unset: nothing changes. See forksafety/guard.py.
    guard_mode = (env.get("FORKSAFETY_GUARD") or "").strip().lower()
    if guard_mode:
        from .guard import install_celery

        install_celery(app, guard_mode)
    return app


@signals.worker_ready.connect
def _announce_ready(sender=None, **_kwargs) -> None:
    """Celery's worker_ready signal: the pool is up (prefork children already forked).
    Write our pid to the file the runner polls, atomically."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))
        tmp.replace(path)


@signals.worker_process_init.connect
def _die_with_worker(**_kwargs) -> None:
    """In each prefork pool child: be killed when the worker main process dies,
    so a killed runner cannot leave pool children behind (prctl PR_SET_PDEATHSIG)."""
    if os.environ.get(READY_FILE_ENV):
        set_parent_death_signal()


@signals.worker_process_init.connect
def _record_start_method(**_kwargs) -> None:
    """In each prefork pool child: tell the runner how this child was started
    (fork, spawn, forkserver), next to its ready file (see forksafety/poolstart.py)."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        from .poolstart import record_pool_child

        record_pool_child(Path(path).parent)
