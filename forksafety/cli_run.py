"""The pool-matrix runner behind ``celery_examples/run_test.py``."""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from rich.console import Console

from . import harness
from .broker import MODES, resolve_broker
from .cli import (
    EXIT_MISMATCH,
    EXIT_OK,
    Parser,
    Progress,
    check_log_dir,
    check_output_file,
    fail,
    make_console,
    path_arg,
    positive_float,
    positive_int,
    print_results,
    run_interruptible,
    stale_temp_line,
    variant_type,
    write_results,
)
from .errors import BrokerError, ForkSafetyError, UsageError
from .outcome import Outcome, Verdict
from .poolstart import force_start_method
from .report import results_record, results_table
from .settings import check_writable, load_settings
from .startmethod import START_METHODS
from .variants import CELERY
from .watch import remove_stale_pid_folders, remove_stale_temp_folders, sweep_run

PROG = "run_test.py"


def build_parser() -> Parser:
    """The runner's argparse parser."""
    p = Parser(prog=PROG, description="Run a real Celery worker per pool (and per fix variant) "
               "against a task module that creates a ChromaDB store at import, and report which deadlock.")
    p.add_argument("--pool", action="append", metavar="NAME", choices=harness.POOLS,
                   help=f"pool to run (repeatable): {', '.join(harness.POOLS)}")
    p.add_argument("--variant", action="append", metavar="NAME", type=variant_type(CELERY),
                   help=f"prefork fix variant (repeatable): {', '.join(harness.VARIANTS)}")
    p.add_argument("--all", action="store_true", help="every pool, and every prefork variant")
    p.add_argument("--start-method", choices=START_METHODS, metavar="METHOD",
                   help=f"start the prefork pool children with {', '.join(START_METHODS)} (forced, on every "
                        "platform: --start-method fork reproduces the report on macOS with billiard >= 4.3)")
    p.add_argument("--timeout", type=positive_float, default=20.0, metavar="SECONDS",
                   help="deadline for each task (default 20)")
    p.add_argument("--stall", type=positive_float, default=2.0, metavar="SECONDS",
                   help="window of the 'stalled' hang rule (default 2)")
    p.add_argument("--concurrency", type=positive_int, default=1, metavar="N", help="pool size (default 1)")
    p.add_argument("--parallel", type=positive_int, default=max(1, os.cpu_count() or 1), metavar="N",
                   help="scenarios run at once (default: the number of CPUs)")
    p.add_argument("--broker", choices=MODES, default="auto",
                   help="auto (default): REDIS_URL if it answers in 1 s, else a private redis-server, "
                        "else kombu's filesystem transport; redis; filesystem")
    p.add_argument("--json", type=path_arg, metavar="PATH", help="write the results record to PATH")
    p.add_argument("--no-capture", action="store_true", help="skip py-spy/pystack capture of hung children")
    p.add_argument("--keep-data", action="store_true", help="keep the per-scenario Chroma folders")
    p.add_argument("--log-dir", type=path_arg, default=harness.REPO_ROOT / "crash_dumps", metavar="DIR",
                   help="worker logs and captures (default crash_dumps/ of this checkout, from any folder)")
    return p


MAX_CONCURRENCY = 64  # pool processes per worker; more is a typo, not a test


STALE_RUN_FOLDER = re.compile(r"run-\d{8}-\d{6}-(\d+)-.+")


def remove_stale_run_folders(chroma_dir: Path) -> list[Path]:
    """Remove ``run-<time>-<pid>-*`` Chroma folders left by runs that were killed
    (their runner pid is gone; see watch.remove_stale_pid_folders)."""
    return remove_stale_pid_folders(chroma_dir, STALE_RUN_FOLDER)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; return the exit code (0 matched, 1 mismatch, 2 usage/set-up, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    console = make_console()
    if not args.all and not args.pool and not args.variant:
        return fail("choose --all, or --pool NAME (repeatable); see --help", prog=PROG)
    try:
        if args.concurrency > MAX_CONCURRENCY:
            raise UsageError(f"--concurrency {args.concurrency} is more than {MAX_CONCURRENCY}",
                             f"use 1 to {MAX_CONCURRENCY}: one pool child is enough to reproduce the deadlock")
        scenarios = harness.select_scenarios(args.pool, args.variant, args.all, args.concurrency)
        scenarios = force_start_method(scenarios, args.start_method)
        settings = load_settings()
        check_writable(settings.chroma_dir)
        check_log_dir(args.log_dir)
        if args.json:
            check_output_file(args.json)
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    return run_interruptible(PROG, _run, args, scenarios, settings, console)


def _run(args, scenarios: list[harness.Scenario], settings, console: Console) -> int:
    options = harness.RunOptions(timeout=args.timeout, stall=args.stall, log_dir=args.log_dir,
                                 keep_data=args.keep_data, capture=not args.no_capture)
    broker = None
    runs: list[harness.ScenarioRun] = []
    verdicts: dict[str, Verdict] = {}
    started = time.monotonic()
    try:
        stale = remove_stale_run_folders(settings.chroma_dir)
        if stale:
            console.print(f"removed {len(stale)} Chroma folder(s) left by killed runs under {settings.chroma_dir}")
        stale_tmp = remove_stale_temp_folders()
        if stale_tmp:
            console.print(stale_temp_line(stale_tmp), highlight=False, soft_wrap=True)
        broker = resolve_broker(args.broker, settings.redis_url, options.run_id)
        console.print(f"broker: {broker.describe()}")
        shown = {k: v for k, v in settings.redacted().items() if k != "redis_url"}  # the broker line says it
        console.print(f"settings: {shown}", soft_wrap=True)
        if os.environ.get("POOL_START_METHOD"):
            console.print(f"note: POOL_START_METHOD={os.environ['POOL_START_METHOD']} is ignored here: each scenario "
                          "sets its own start method (use --start-method, --variant spawn or --variant forkserver)")
        console.print(f"{len(scenarios)} scenario(s), {min(args.parallel, len(scenarios))} at a time, "
                      f"task deadline {args.timeout:g} s")
        progress = Progress(console, [s.name for s in scenarios])
        runs = [harness.ScenarioRun(s, broker, settings, options, progress) for s in scenarios]
        pool = ThreadPoolExecutor(max_workers=min(args.parallel, len(runs)))
        progress.__enter__()
        try:
            futures = {pool.submit(r.run): r for r in runs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    verdict = fut.result()
                    verdicts[futures[fut].scenario.name] = verdict
                    if verdict.outcome is Outcome.ERROR:
                        lost = broker.lost()
                        if lost:
                            raise BrokerError(lost, "check that Redis is running (redis-cli ping) and run again")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for r in runs:
                r.cancel()
            pool.shutdown(wait=True)
            progress.__exit__()
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    finally:
        if broker is not None:
            broker.cleanup()
        left = sweep_run(options.run_id)
        if left:
            console.print(f"[yellow]stopped {len(left)} leftover process(es) of this run: {left}[/]")
    ordered = [verdicts[s.name] for s in scenarios]
    wall = time.monotonic() - started
    matched = print_results(console, ordered, wall, args.log_dir, results_table(ordered, width=console.width))
    if args.json:
        write_results(console, args.json, results_record(ordered, broker.describe(), run_id=options.run_id,
                                                         wall_seconds=round(wall, 2), timeout=args.timeout,
                                                         stall=args.stall))
    return EXIT_OK if matched else EXIT_MISMATCH
