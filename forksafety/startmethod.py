"""Prefork without fork: run the prefork pool's children with billiard's
``spawn`` or ``forkserver`` start method.

One line in your own Celery app::

    from forksafety.startmethod import use_start_method
    use_start_method(app, "spawn")        # or "forkserver"; or set POOL_START_METHOD

or set ``POOL_START_METHOD=spawn`` where ``forksafety.app.make_app`` creates the app.

How it works, and what it relies on:

* ``spawn``: Celery's own setting ``worker_pool_start_method = "spawn"``
  (``--pool-start-method spawn``; accepted values ``fork`` and ``spawn``, see
  celery/worker/worker.py). Each pool child is a fresh interpreter that
  imports the task modules itself: module-level resources are created again,
  with their own threads.
* ``fork``: Celery's ``worker_pool_start_method = "fork"`` (its default) only
  calls billiard's ``forking_enable(True)``, which keeps billiard's default
  context: ``spawn`` on macOS from billiard 4.3 (billiard/context.py). To fork
  on every platform (e.g. to reproduce the report on a Mac), this also calls
  ``billiard.context._force_start_method("fork")``.
* ``forkserver``: Celery has no setting for it, so this calls
  ``billiard.context._force_start_method("forkserver")``, a private billiard
  function (name starts with an underscore; billiard 4.3.2 is pinned and a test
  checks it still exists), and sets ``FORKED_BY_MULTIPROCESSING=1`` so Celery
  treats the children as fresh interpreters (celery/concurrency/prefork.py).
  The fork server is a clean process started before any task module's
  threads exist in it; children are forked from it, not from the worker.

Costs: children start slower (a fresh interpreter imports celery and the task
modules: measured in benchmarks/startmethod.py); everything a child needs must
be importable by module name (nothing defined only in ``__main__``); and the
worker main process still holds whatever the module created at import.
"""

from __future__ import annotations

import os

from .errors import SettingsError

START_METHODS = ("fork", "spawn", "forkserver")
ENV_VAR = "POOL_START_METHOD"


def use_start_method(app, method: str) -> None:
    """Make ``app``'s prefork pool start its children with ``method``.

    app: a ``celery.Celery`` app. method: ``fork`` (Celery's default),
    ``spawn`` or ``forkserver``. Call it where the app is created, before the
    worker starts. Raises SettingsError for any other method.
    """
    if method not in START_METHODS:
        raise SettingsError(f"unknown pool start method {method!r}",
                            f"set {ENV_VAR} to one of {', '.join(START_METHODS)}")
    if method == "forkserver":
        from billiard import context

        context._force_start_method("forkserver")  # private: see the module docstring
        os.environ["FORKED_BY_MULTIPROCESSING"] = "1"
        app.conf.worker_pool_start_method = "fork"  # Celery must not override it
    elif method == "fork":
        from billiard import context

        # Celery's "fork" only calls forking_enable(True), which keeps billiard's
        # default: spawn on macOS from billiard 4.3. Force fork for real.
        context._force_start_method("fork")  # private: see the module docstring
        app.conf.worker_pool_start_method = "fork"
    else:
        app.conf.worker_pool_start_method = method


def start_method_from_env(app, environ: dict[str, str] | None = None) -> str | None:
    """Apply ``POOL_START_METHOD`` from ``environ`` (default os.environ) to ``app``.
    Returns the method applied, or None when the variable is unset."""
    env = os.environ if environ is None else environ
    method = (env.get(ENV_VAR) or "").strip().lower()
    if not method:
        return None
    use_start_method(app, method)
    return method
