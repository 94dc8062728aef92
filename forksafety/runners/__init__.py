"""The runner matrix: the fork-safety bug beyond Celery, each runner run for real.

Gunicorn, uWSGI, the report's FastAPI + Celery app, RQ, Huey, Dramatiq and
multiprocessing, each with the store created at module level (the bug as users
write it), the runner's default, and its documented fix. ``CATALOG`` lists the
scenarios with their expected outcomes (measured here: docs/RUNNERS.md);
``run_matrix`` runs them and returns one ``RunnerVerdict`` each.

Importing this package starts no thread, opens nothing, imports no runner.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ..errors import ToolMissingError, UsageError
from ..outcome import Expected, Outcome
from ..watch import sweep_orphans, sweep_run
from . import drivers
from .model import Driver, RunnerVerdict, RunOptions, Scenario, ScenarioRun, find_program

HANG, PASS = Expected(Outcome.HANG), Expected(Outcome.PASS)

# (scenario, driver factory), in the order the matrix runs them
CATALOG: list[tuple[Scenario, Callable[[], Driver]]] = [
    (Scenario("multiprocessing", "pool-fork", "bug", HANG, "Pool(1), fork context, store made in the parent"),
     lambda: drivers.Multiprocessing("fork")),
    (Scenario("multiprocessing", "executor-fork", "bug", HANG, "ProcessPoolExecutor(1), fork context"),
     lambda: drivers.Multiprocessing("fork", "futures")),
    (Scenario("multiprocessing", "spawn", "fix", PASS, "Pool(1), spawn context"),
     lambda: drivers.Multiprocessing("spawn")),
    (Scenario("multiprocessing", "forkserver", "fix", PASS, "Pool(1), forkserver context (3.14's Linux default)"),
     lambda: drivers.Multiprocessing("forkserver")),
    (Scenario("gunicorn", "preload", "bug", HANG, "--preload: the master imports the app, then forks"),
     lambda: drivers.Gunicorn(preload=True)),
    (Scenario("gunicorn", "no-preload", "default", PASS, "default: each worker imports the app after the fork"),
     lambda: drivers.Gunicorn(preload=False)),
    (Scenario("gunicorn", "post-fork", "fix", PASS, "--preload kept, the store opened in a post_fork hook"),
     lambda: drivers.Gunicorn(preload=True, config="runner_examples/gunicorn_post_fork.conf.py",
                              app="runner_examples.wsgi_app_post_fork:application")),
    (Scenario("fastapi", "prefork", "bug", HANG, "the report's app: FastAPI -> delay() -> Celery prefork"),
     lambda: drivers.FastAPIReplay("celery_examples.tasks_pool_test")),
    (Scenario("fastapi", "worker-process-init", "fix", PASS, "the same, the store opened in worker_process_init"),
     lambda: drivers.FastAPIReplay("celery_examples.tasks_worker_process_init")),
    (Scenario("rq", "default", "default", PASS, "rq worker: the horse imports the job module after the fork"),
     lambda: drivers.RQ(preload=False)),
    (Scenario("rq", "preload", "bug", HANG, "the preload worker script: job module imported before work()"),
     lambda: drivers.RQ(preload=True)),
    (Scenario("rq", "preload-spawn", "fix", PASS, "the preload script with SpawnWorker (posix_spawn)"),
     lambda: drivers.RQ(preload=True, worker_class="SpawnWorker")),
    (Scenario("rq", "preload-simple", "fix", PASS, "the preload script with SimpleWorker (no fork)"),
     lambda: drivers.RQ(preload=True, worker_class="SimpleWorker")),
    (Scenario("huey", "process", "bug", HANG, "huey_consumer -k process: the consumer imports, then forks"),
     lambda: drivers.Huey("runner_examples.huey_tasks")),
    (Scenario("huey", "on-startup", "fix", PASS, "-k process, the store opened in @huey.on_startup()"),
     lambda: drivers.Huey("runner_examples.huey_tasks_startup")),
    (Scenario("dramatiq", "default", "default", PASS, "dramatiq: each worker process imports the actors"),
     lambda: drivers.Dramatiq()),
    (Scenario("uwsgi", "default", "bug", HANG, "--master: the master imports the app, then forks"),
     lambda: drivers.UWSGI(lazy=False)),
    (Scenario("uwsgi", "lazy-apps", "fix", PASS, "--lazy-apps: each worker imports the app after the fork"),
     lambda: drivers.UWSGI(lazy=True)),
]
RUNNERS = tuple(dict.fromkeys(s.runner for s, _ in CATALOG))


def select(runners: list[str] | None, everything: bool, fixed: bool = False,
           variants: list[str] | None = None) -> list[tuple[Scenario, Callable[[], Driver]]]:
    """The scenarios for --all / --runner NAME (repeatable) [--fixed] [--variant NAME].

    --fixed: only the runner's fixes and safe defaults. --variant: only those variants.
    Raises UsageError for an unknown runner or variant, or an empty selection.
    """
    for name in runners or []:
        if name not in RUNNERS:
            raise UsageError(f"unknown runner {name!r}", f"use one of {', '.join(RUNNERS)}")
    chosen = [(s, d) for s, d in CATALOG if everything or s.runner in (runners or [])]
    if fixed:
        chosen = [(s, d) for s, d in chosen if s.kind != "bug"]
    if variants:
        known = {s.variant for s, _ in chosen}
        for v in variants:
            if v not in known:
                raise _variant_left_out(v, list(RUNNERS) if everything else runners or [], fixed, sorted(known))
        chosen = [(s, d) for s, d in chosen if s.variant in variants]
    if not chosen:
        raise UsageError("no scenario selected", "choose --all or --runner NAME")
    return chosen


def _variant_left_out(variant: str, runners: list[str], fixed: bool, known: list[str]) -> UsageError:
    """Why --variant ``variant`` selects nothing from the chosen ``runners``: --fixed left
    the bug out, it is another runner's variant, or no runner has it."""
    choose = f"use one of {', '.join(known)}" if known else "see --list"
    owners = list(dict.fromkeys(s.runner for s, _ in CATALOG if s.variant == variant))
    chosen_owners = [r for r in owners if r in runners]
    if fixed and chosen_owners:
        return UsageError(f"--variant {variant} is the bug variant of {chosen_owners[0]}, and --fixed runs only "
                          "the fixes", f"drop --fixed to run it, or {choose}")
    if owners:
        theirs = " and ".join(f"{r}'s" for r in owners)
        mine = " or ".join(f"{r}'s" for r in runners)
        return UsageError(f"variant {variant!r} is {theirs}, not {mine}", f"add --runner {owners[0]}, or {choose}")
    return UsageError(f"unknown variant {variant!r} for the runners chosen", choose)


def check_programs(chosen: list[tuple[Scenario, Callable[[], Driver]]], options: RunOptions) -> None:
    """Raise ToolMissingError (exit 2) before any work when a runner program is missing,
    or ``redis-server`` (on PATH) when a scenario needs the run's private Redis."""
    import shutil

    needs_redis = []
    for scenario, factory in chosen:
        driver = factory()
        for program in driver.programs:
            find_program(program, options.bin_dir)
        if driver.needs_redis and scenario.runner not in needs_redis:
            needs_redis.append(scenario.runner)
    if needs_redis and options.redis_url is None and shutil.which("redis-server") is None:
        raise ToolMissingError(f"redis-server is not installed (not on PATH): the {', '.join(needs_redis)} "
                               "scenarios start a private one",
                               "install it (`sudo apt-get install redis-server`; the Dockerfile has it), or leave "
                               f"out --runner {' / '.join(needs_redis)}")


def run_matrix(chosen: list[tuple[Scenario, Callable[[], Driver]]], options: RunOptions, parallel: int = 2,
               progress: Callable[[str, str], None] | None = None) -> list[RunnerVerdict]:
    """Run the scenarios, ``parallel`` at a time, and return their verdicts in order.

    Starts a private redis-server when a scenario needs Redis and ``options.redis_url``
    is None, and stops it at the end. Every process of the run is stopped on every
    path (a scenario's own stop, then a sweep of the run's tag); an exception (e.g.
    Interrupted on Ctrl-C) cancels the scenarios still running, then propagates.
    """
    from ..loopback import start_redis_server

    server = None
    runs = [ScenarioRun(s, factory(), options, progress) for s, factory in chosen]
    verdicts: dict[str, RunnerVerdict] = {}
    try:
        redis_url = options.redis_url
        if redis_url is None and any(r.driver.needs_redis for r in runs):
            server = start_redis_server(options.run_id)
            redis_url = server.url
        pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(runs))), thread_name_prefix="forksafety-runner")
        try:
            futures = {pool.submit(r.run, redis_url): r for r in runs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    verdicts[futures[fut].scenario.name] = fut.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for r in runs:
                r.cancel()
            pool.shutdown(wait=True)
    finally:
        sweep_run(options.run_id)
        if server is not None:
            server.stop()
    return [verdicts[r.scenario.name] for r in runs]


def stale_cleanup() -> list[int]:
    """Stop what killed runner-matrix runs left behind (``watch.sweep_orphans``)."""
    return sweep_orphans()


__all__ = ["CATALOG", "RUNNERS", "RunOptions", "RunnerVerdict", "Scenario", "check_programs", "run_matrix",
           "select", "stale_cleanup"]
