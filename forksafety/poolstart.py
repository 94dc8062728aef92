"""Which start method a prefork pool child really used, read from the child itself.

Why: the expected outcome depends on it, and the platform alone does not tell.
billiard >= 4.3 starts pool children with ``spawn`` on macOS by default
(billiard/context.py: ``if sys.platform == 'darwin': _default_context =
DefaultContext(_concrete_contexts['spawn'])``, celery/celery#9894); billiard
4.2.x forks everywhere. Celery 5.7's ``worker_pool_start_method = 'fork'`` only
calls ``forking_enable(True)`` (celery/concurrency/prefork.py), which leaves
billiard's default in place.

How: in each pool child, Celery's ``worker_process_init`` signal (connected in
forksafety/app.py) calls ``record_pool_child``, which writes one small JSON
file next to the runner's ready file: the child's pid, its process class
(billiard's ``ForkProcess``, ``SpawnProcess``, ``ForkServerProcess``: their
``_start_method`` attribute, billiard/context.py), its name (``ForkPoolWorker-1``,
``SpawnPoolWorker-1``: billiard/pool.py renames ``*Process-N`` to
``*PoolWorker-N``) and billiard's own ``get_start_method(allow_none=True)``
inside the child. The runner reads it with ``read_pool_child``.

Writing a file is plain Python in the child: it starts no thread and takes
no lock that a fork could have left held.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

CHILD_FILE = "pool-child-{pid}.json"
NO_POOL_CHILD = "no pool child"  # threads, solo, gevent, eventlet: the task runs in the worker process
_NAME_RE = re.compile(r"^(Fork|Spawn|ForkServer)PoolWorker")
_NAME_METHOD = {"Fork": "fork", "Spawn": "spawn", "ForkServer": "forkserver"}


def child_record() -> dict:
    """In a billiard pool child: ``{"pid", "process_class", "process_name",
    "start_method", "billiard_start_method"}``. ``start_method`` comes from the
    process class (``_start_method``), else from the process name; None when
    neither tells (e.g. called outside a pool child)."""
    import billiard
    from billiard import process

    proc = process.current_process()
    method = getattr(type(proc), "_start_method", None)
    if method is None:
        match = _NAME_RE.match(proc.name or "")
        method = _NAME_METHOD[match.group(1)] if match else None
    try:
        billiard_says = billiard.get_start_method(allow_none=True)
    except Exception:  # noqa: BLE001 - an old billiard without allow_none: the class is the answer
        billiard_says = None
    return {"pid": os.getpid(), "process_class": type(proc).__name__, "process_name": proc.name,
            "start_method": method, "billiard_start_method": billiard_says}


def record_pool_child(folder: Path) -> Path:
    """Write ``child_record()`` to ``folder/pool-child-<pid>.json`` atomically
    (temp file + rename). Raises OSError when the folder is not writable."""
    record = child_record()
    path = Path(folder) / CHILD_FILE.format(pid=record["pid"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return path


def read_pool_child(folder: Path | None, pid: int | None = None) -> dict | None:
    """The record a pool child wrote in ``folder``: the one of ``pid`` when given
    and present, else the first one written (concurrency 1: the only child).
    None when no child wrote one (the worker never started its pool)."""
    if folder is None:
        return None
    paths = []
    if pid is not None:
        paths.append(Path(folder) / CHILD_FILE.format(pid=pid))
    try:
        paths += sorted(Path(folder).glob("pool-child-*.json"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    for path in paths:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def default_start_method() -> str:
    """billiard's default start method in this process (``fork`` on Linux; ``spawn``
    on macOS from billiard 4.3), read without setting it (billiard/context.py)."""
    from billiard import context

    default = context._default_context  # private: DefaultContext; its _actual_context is the forced one
    chosen = getattr(default, "_actual_context", None) or getattr(default, "_default_context", None)
    return getattr(chosen, "_name", None) or "fork"


def predicted_start_method(pool: str, env: dict[str, str]) -> str:
    """The start method a worker will use for ``pool`` with the scenario's ``env``
    (POOL_START_METHOD forces one), for when no child reported it."""
    if pool != "prefork":
        return NO_POOL_CHILD
    return (env.get("POOL_START_METHOD") or "").strip().lower() or default_start_method()


def start_method_of(pool: str, env: dict[str, str], folder: Path | None,
                    pid: int | None = None) -> tuple[str, dict | None]:
    """The start method for a verdict and the child's own record: what the pool child
    wrote in ``folder`` (``read_pool_child``), else the prediction, marked ``(predicted)``."""
    if pool != "prefork":
        return NO_POOL_CHILD, None
    record = read_pool_child(folder, pid)
    if record and record.get("start_method"):
        return record["start_method"], record
    return f"{predicted_start_method(pool, env)} (predicted)", record


def force_start_method(scenarios: list, method: str | None) -> list:
    """``run_test.py --start-method``: the prefork scenarios of ``scenarios`` (harness.Scenario)
    with POOL_START_METHOD=``method`` in their worker environment; other pools unchanged.

    Raises UsageError when no scenario uses the prefork pool, or when a variant
    already chooses a different method (``--variant spawn --start-method fork``).
    """
    from dataclasses import replace

    from .errors import UsageError

    if not method:
        return scenarios
    if not any(s.pool == "prefork" for s in scenarios):
        raise UsageError(f"--start-method {method} applies to the prefork pool only",
                         "add --pool prefork (or a --variant), or drop --start-method")
    forced = []
    for s in scenarios:
        env = dict(s.env)
        if s.pool == "prefork":
            if env.get("POOL_START_METHOD", method) != method:
                raise UsageError(f"--variant {s.variant} already starts the pool children with "
                                 f"{env['POOL_START_METHOD']}, not {method}",
                                 f"drop --start-method, or use --variant module-level --start-method {method}")
            env["POOL_START_METHOD"] = method
            s = replace(s, env=tuple(sorted(env.items())))
        forced.append(s)
    return forced
