"""A guard for running workers: say, at the moment a process forks, which threads
the child will not have, where they came from and what to do.

Two lines in your own code::

    import forksafety.guard
    forksafety.guard.install()            # "warn" (default), "log" or "strict"

* ``warn``: every fork() of a process with threads a child would lose emits a
  ``ForkSafetyWarning`` (a RuntimeWarning, shown by default, every time) naming
  the threads and their origin. CPython 3.12+ only emits a DeprecationWarning,
  hidden by default, that says none of that.
* ``log``: the same text as a WARNING record of the ``forksafety.guard`` logger.
* ``strict``: ``os.fork`` raises ``ForkUnsafeError`` instead of forking such a
  process (multiprocessing's and billiard's fork start methods call os.fork).

How: ``os.register_at_fork(before=...)`` (Python docs, os.register_at_fork:
"before" callables run in the parent before fork(), for os.fork, os.forkpty and
subprocess with a preexec_fn; exceptions in them are ignored, they cannot stop a
fork), hence strict mode also wraps ``os.fork``. At-fork handlers cannot be
unregistered: ``uninstall()`` makes ours do nothing.

For Celery, one line in the app module::

    forksafety.guard.install_celery(app)              # "log" (default) or "strict"

hooks ``celeryd_after_setup``: Celery sends it in the worker's main process from
``Worker.on_start`` (celery/apps/worker.py), after logging is set up and the
pool class is resolved, and before the blueprint starts the Pool bootstep whose
prefork pool forks the children (celery/bootsteps.py ``Blueprint.start`` calls
``on_start`` first). ``worker_init`` fires earlier, before logging exists, so
its messages would not reach the worker's log. The tests verify the order with
a real worker. ``forksafety.app.make_app`` calls it when FORKSAFETY_GUARD is
``log`` or ``strict``.

Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable

from . import check
from .errors import ForkSafetyError, ForkSafetyWarning, ForkUnsafeError, SettingsError  # noqa: F401 - ForkSafetyError, ForkSafetyWarning and ForkUnsafeError re-exported

MODES = ("warn", "log", "strict")
CELERY_MODES = ("log", "strict")
ENV_VAR = "FORKSAFETY_GUARD"
EXIT_REFUSED = 1  # exit code of a Celery worker that strict mode stopped
LOGGER = logging.getLogger("forksafety.guard")

_REAL_FORK = os.fork  # the genuine os.fork, whatever strict mode does to the attribute


class _State:
    mode: str | None = None
    registered = False
    local = threading.local()
    context: Callable[[], str] | None = None  # says where the fork happens (the pytest plugin: the test)


def _where(call: str) -> str:
    """``call`` (e.g. "fork()"), followed by the installer's context when it gives one."""
    try:
        context = _State.context() if _State.context is not None else ""
    except Exception:  # noqa: BLE001 - naming the place must never break the fork
        context = ""
    return f"{call} in {context}" if context else call


def real_fork() -> int:
    """The genuine ``os.fork()``, even under strict mode (for tools that fork on purpose)."""
    return _REAL_FORK()


def fork_message(report: check.Report, where: str = "fork()", first_fixes: list[str] | None = None) -> str:
    """The guard's message (several lines): who forks, the threads the child
    loses with their origin, and the fixes, e.g.::

        forksafety: fork() in pid 7 with 9 threads a forked child would lose: 6 x tokio-rt-worker (...)
          The child gets none of those threads, only a copy of the state they guard ...
          Fix (one of):
            - ...

    first_fixes: fixes to list before the libraries' own (e.g. Celery's)."""
    fixes = check.fixes(report)
    ordered = list(first_fixes or []) + [f for f in fixes if f not in (first_fixes or [])]
    lines = [f"forksafety: {where} in pid {report.pid} with {check.short_summary(report)}.",
             "  The child gets none of those threads, only a copy of the state they guard (held locks, "
             "runtimes, queues): code in the child that needs them can block forever."]
    if ordered:
        lines.append("  Fix (one of):")
        lines += [f"    - {fix}" for fix in ordered]
    return "\n".join(lines)


def _unsafe_report() -> check.Report | None:
    """A threads-only inspection of this process, or None when no unsafe thread exists."""
    report = check.inspect_process(fds=False, objects=False)
    return report if any(t.safety == "unsafe" for t in report.threads) else None


def _before_fork() -> None:
    """os.register_at_fork ``before`` handler: warn or log. Never raises."""
    mode = _State.mode
    if mode is None or getattr(_State.local, "checked", False):
        return
    try:
        report = _unsafe_report()
        if report is None:
            return
        message = fork_message(report, _where("fork()"))
        if mode == "log":
            LOGGER.warning(message)
        else:
            # stacklevel 2: the frame that called os.fork (this handler runs from os.fork)
            warnings.warn(message, ForkSafetyWarning, stacklevel=2)
    except Exception:  # noqa: BLE001 - a guard must never break the fork it watches
        pass


def _strict_fork() -> int:
    """os.fork replacement in strict mode: raise ForkUnsafeError, or fork."""
    report = _unsafe_report() if _State.mode == "strict" else None
    if report is not None:
        raise ForkUnsafeError(fork_message(report, _where("os.fork()") + " refused"),
                              "fix the cause above, or call forksafety.guard.install('warn') to only warn")
    _State.local.checked = True
    try:
        return _REAL_FORK()
    finally:
        _State.local.checked = False


def install(mode: str = "warn", *, track: bool = True, context: Callable[[], str] | None = None) -> None:
    """Install the guard in this process (idempotent; a second call changes the mode).

    mode: "warn", "log" or "strict" (see the module docstring).
    track: also start ``forksafety.check.start_tracking`` so threads started
    from now on are reported with the stack that started them (cost: at most
    one listing of /proc/self/task per millisecond of audited activity; pass
    False in hot processes).
    context: called at each fork to name where it happens (e.g. ``test tests/x.py::t``),
    shown after "fork()" in the message; None keeps the previous one.
    Raises SettingsError for an unknown mode.
    """
    if mode not in MODES:
        raise SettingsError(f"unknown guard mode {mode!r}", f"use one of {', '.join(MODES)}")
    if track:
        check.start_tracking()
    if not _State.registered:
        os.register_at_fork(before=_before_fork)
        _State.registered = True
    warnings.filterwarnings("always", category=ForkSafetyWarning)
    _State.mode = mode
    if context is not None:
        _State.context = context
    os.fork = _strict_fork if mode == "strict" else _REAL_FORK


def uninstall() -> None:
    """Make the guard do nothing and give ``os.fork`` back (the at-fork handler
    stays registered, as os.register_at_fork offers no way to remove it)."""
    _State.mode = None
    _State.context = None
    os.fork = _REAL_FORK


def installed_mode() -> str | None:
    """The current mode, or None when the guard is not installed."""
    return _State.mode


# --------------------------------------------------------------------------------------
# Celery
# --------------------------------------------------------------------------------------
CELERY_FIXES = [
    "create it in each pool child instead, from a celery.signals.worker_process_init handler "
    "(an example: celery_examples/tasks_worker_process_init.py in forksafety's repository)",
    "use a pool that does not fork: --pool threads or --pool solo",
    # worker_pool_start_method: in celery 5.7.0 (our pin), not in 5.5.3 (make versions, docs/VERSIONS.md)
    "start the pool children with spawn: app.conf.worker_pool_start_method = \"spawn\" (celery 5.7 has "
    "this setting, 5.5.3 does not), or forksafety.startmethod.use_start_method(app, \"spawn\"); "
    "the harness's own apps: POOL_START_METHOD=spawn",
]

# The fix per runner, for ``forksafety check --runner NAME`` (and the runner the check
# sees imported). "measured" fixes are scenarios of scripts/run_runners.py (docs/RUNNERS.md);
# the others are the runner's documented alternative, not run here. "it" is whatever the
# check found (a store, a client, a thread pool): the fixes say where to create it, not what
# it is; example files are named with "in forksafety's repository" (an installed tool has none).
RUNNER_FIXES: dict[str, list[str]] = {
    "celery": CELERY_FIXES,
    "gunicorn": [
        "drop --preload: each worker then imports the app after the fork (measured: gunicorn/no-preload)",
        "or keep --preload and create it in a post_fork(server, worker) hook of the Gunicorn config "
        "(measured: gunicorn/post-fork; an example: runner_examples/gunicorn_post_fork.conf.py in forksafety's "
        "repository)",
    ],
    "uwsgi": [
        "add --lazy-apps (lazy-apps = true): each worker loads the app after the fork (measured: uwsgi/lazy-apps)",
        "or create it in a function decorated with uwsgidecorators.postfork (uWSGI's hook; not run here)",
    ],
    "huey": [
        "create it in an @huey.on_startup() hook: the consumer runs the hook in each worker as it starts, after "
        "the fork (measured: huey/on-startup; an example: runner_examples/huey_tasks_startup.py in forksafety's "
        "repository)",
        "or run thread workers, which do not fork: huey_consumer -k thread (not run here)",
    ],
    "rq": [
        "use the default `rq worker` and keep this module out of the worker script: the work horse "
        "imports it after the fork (measured: rq/default)",
        "or, with a preloading worker script, use SpawnWorker (posix_spawn, measured: rq/preload-spawn) or "
        "SimpleWorker (no fork, measured: rq/preload-simple)",
    ],
    "dramatiq": [
        "dramatiq imports your actor modules in each worker process after it starts, so what a module "
        "creates at import is created there (measured with a store: dramatiq/default); do not create it in "
        "code that runs before the workers start (the main process, --fork-function)",
    ],
    # The report's app: FastAPI sends Celery tasks; the fork that breaks the store is the
    # Celery worker's prefork pool, not the web server (runners matrix: fastapi/*).
    "fastapi": [
        "the work runs in the Celery worker, whose prefork pool forks: create it in each pool child from a "
        "celery.signals.worker_process_init handler (measured: fastapi/worker-process-init), or use the "
        "other Celery fixes (--runner celery)",
        "if the FastAPI app itself creates it and is served by gunicorn --preload: --runner gunicorn",
    ],
    "multiprocessing": [
        "use the spawn or forkserver context: multiprocessing.get_context(\"spawn\").Pool(...), or "
        "ProcessPoolExecutor(mp_context=get_context(\"spawn\")) (measured: multiprocessing/spawn, /forkserver; "
        "forkserver is Linux's default from Python 3.14, not run here)",
        "or create it only in the workers, from the pool's initializer= (not run here)",
    ],
}


def _pool_is_forking_prefork(app, worker) -> tuple[bool, str]:
    """(True, "") when ``worker`` runs the prefork pool with fork as start method;
    else (False, why not)."""
    pool_cls = getattr(worker, "pool_cls", None)
    try:
        from celery.concurrency.prefork import TaskPool
    except ImportError:  # pragma: no cover - celery without prefork support
        return False, "no prefork pool available"
    if isinstance(pool_cls, str):
        from celery import concurrency

        pool_cls = concurrency.get_implementation(pool_cls)
    if not (isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)):
        name = getattr(pool_cls, "__module__", str(pool_cls))
        return False, f"pool {name} does not fork"
    if (app.conf.worker_pool_start_method or "fork") == "spawn":
        return False, "pool children are started with spawn"
    try:
        from billiard import context

        forced = context._default_context.get_start_method(allow_none=True)
    except Exception:  # noqa: BLE001 - an older billiard: assume fork
        forced = None
    if forced in ("spawn", "forkserver"):
        return False, f"pool children are started with {forced}"
    return True, ""


def celery_check(app, worker, mode: str = "log") -> check.Report | None:
    """Run the check in the worker's main process, before the prefork pool forks.

    Logs an ERROR naming the threads, their origin and the fixes (including the
    spawn start method) when the process is unsafe (or RISK), an INFO line
    otherwise. With ``mode="strict"`` and an UNSAFE process, logs CRITICAL and
    raises ``SystemExit(EXIT_REFUSED)``: Celery's WorkController.start turns that
    into a worker exit with that code, before any pool child exists.
    Returns the report (None when the pool does not fork).
    """
    forks, why = _pool_is_forking_prefork(app, worker)
    if not forks:
        LOGGER.info("forksafety: %s: nothing is inherited through fork()", why)
        return None
    report = check.inspect_process()
    if report.verdict is check.Safety.SAFE:
        LOGGER.info("forksafety: the worker main process holds nothing a forked pool child would lose")
        return report
    if mode == "strict" and report.verdict is check.Safety.UNSAFE:
        LOGGER.critical("%s", fork_message(report, "refusing to start the prefork pool (FORKSAFETY_GUARD=strict): "
                                                   "its children would be forked", CELERY_FIXES))
        raise SystemExit(EXIT_REFUSED)
    LOGGER.error("%s", fork_message(report, "the prefork pool is about to fork its children", CELERY_FIXES))
    return report


def install_celery(app, mode: str = "log", *, track: bool = True) -> None:
    """Check the worker of ``app`` before its prefork pool forks (one line in the app).

    mode: "log" (an ERROR record naming threads and fixes) or "strict" (also
    refuse to start the prefork pool: the worker exits with EXIT_REFUSED).
    track: start ``forksafety.check.start_tracking`` now, so threads the app's
    module creates afterwards are reported with where they were first seen
    (tracking stops once the check has run, unless ``install`` is also used).
    Hooks Celery's ``celeryd_after_setup`` signal (see the module docstring).
    Raises SettingsError for an unknown mode.
    """
    if mode not in CELERY_MODES:
        raise SettingsError(f"unknown Celery guard mode {mode!r}",
                            f"set {ENV_VAR} to one of {', '.join(CELERY_MODES)} (or leave it unset)")
    from celery import signals

    if track:
        check.start_tracking()

    def _on_after_setup(sender=None, instance=None, **_kwargs) -> None:
        if instance is not None and getattr(instance, "app", None) is app:
            try:
                celery_check(app, instance, mode)
            finally:
                tracker = check.current_tracker()
                if tracker is not None and _State.mode is None:  # not needed once the pool is up
                    tracker.stop()

    signals.celeryd_after_setup.connect(_on_after_setup, weak=False, dispatch_uid=f"forksafety.guard.{id(app)}")
    app.forksafety_guard = mode
