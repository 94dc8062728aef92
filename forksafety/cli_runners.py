"""The runner matrix behind ``scripts/run_runners.py``."""

from __future__ import annotations

import os
import time

from . import runners
from .cli import (EXIT_MISMATCH, EXIT_OK, OnceAction, Parser, Progress, check_log_dir, check_output_file, fail,
                  hold_log_dir, int_range, make_console, path_arg, positive_float, print_results, run_interruptible,
                  stale_temp_line,
                  write_results)
from .errors import ForkSafetyError, UsageError
from .loopback import port_taken
from .report import results_record, results_table
from .settings import REPO_ROOT, load_settings
from .watch import remove_stale_temp_folders

PROG = "run_runners.py"
RUNNER_PACKAGES = ("gunicorn", "uwsgi", "uvicorn", "fastapi", "celery", "rq", "huey", "dramatiq", "chromadb",
                   "redis")


def build_parser() -> Parser:
    """The runner matrix's argparse parser."""
    p = Parser(prog=PROG, description="Run each job queue / server for real with a module-level ChromaDB store "
               "(the bug) and with its documented fix, and report which ones deadlock.")
    p.add_argument("--runner", action="append", metavar="NAME", choices=runners.RUNNERS,
                   help=f"runner to run (repeatable): {', '.join(runners.RUNNERS)}")
    p.add_argument("--all", action="store_true", help="every runner, every variant")
    p.add_argument("--fixed", action="store_true", help="only the fixes and safe defaults (no bug variant)")
    p.add_argument("--variant", action="append", metavar="NAME", help="only this variant (repeatable; see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios and their expected outcomes")
    p.add_argument("--timeout", type=positive_float, default=20.0, metavar="SECONDS",
                   help="deadline for each job or request (default 20)")
    p.add_argument("--stall", type=positive_float, default=2.0, metavar="SECONDS",
                   help="window of the 'stalled' hang rule (default 2)")
    p.add_argument("--parallel", type=int_range(8), default=max(1, min(2, os.cpu_count() or 1)), metavar="N",
                   help="scenarios run at once (default 2)")
    p.add_argument("--port", type=int_range(65535), action=OnceAction, metavar="PORT",
                   help="port of the server runners (gunicorn, uwsgi, fastapi); default a free one per scenario. "
                        "With --port the scenarios run one at a time")
    p.add_argument("--bin-dir", type=path_arg, metavar="DIR",
                   help="where to find the runner programs (default: next to this Python, then PATH)")
    p.add_argument("--json", type=path_arg, metavar="PATH", help="write the results record to PATH")
    p.add_argument("--no-capture", action="store_true", help="skip py-spy/pystack stacks of hung workers")
    p.add_argument("--log-dir", type=path_arg, default=REPO_ROOT / "crash_dumps", metavar="DIR",
                   help="process logs and captures (default crash_dumps/)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the runner matrix; return the exit code (0 matched, 1 mismatch, 2 usage/set-up, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    console = make_console()
    if args.all and args.runner:
        return fail(UsageError("--all and --runner together: --all runs every runner", "give one of the two"), prog=PROG)
    if args.list:
        try:  # the scenarios the other options select (all of them without --runner)
            listed = runners.select(args.runner, not args.runner, args.fixed, args.variant)
        except ForkSafetyError as exc:
            return fail(exc, prog=PROG)
        for scenario, _ in listed:
            console.print(f"{scenario.runner:<16} {scenario.variant:<20} {scenario.kind:<8} "
                          f"{str(scenario.expected):<6} {scenario.summary}")
        return EXIT_OK
    if not args.all and not args.runner:
        return fail("choose --all, or --runner NAME (repeatable); see --help", prog=PROG)
    options = runners.RunOptions(timeout=args.timeout, stall=args.stall, log_dir=args.log_dir,
                                 capture=not args.no_capture, port=args.port, bin_dir=args.bin_dir)
    try:
        chosen = runners.select(args.runner, args.all, args.fixed, args.variant)
        if args.bin_dir is not None and not args.bin_dir.is_dir():
            raise UsageError(f"--bin-dir {args.bin_dir} is not a folder", "pass the folder that holds the programs")
        load_settings()  # what every example loads (.env, environment): a bad one is one line here
        runners.check_programs(chosen, options)
        if args.port is not None and not any(factory().needs_port for _, factory in chosen):
            servers = list(dict.fromkeys(s.runner for s, factory in runners.CATALOG if factory().needs_port))
            raise UsageError(f"--port is for the server runners ({', '.join(servers)}); the runners chosen listen "
                             "on no port", f"leave --port out, or add --runner {' / '.join(servers)}")
        if args.port is not None and port_taken(args.port):
            raise UsageError(f"port {args.port} on 127.0.0.1 is already taken",
                             "pass another --port, or leave --port out to use a free one")
        check_log_dir(args.log_dir)
        hold_log_dir(args.log_dir, PROG)  # released when this process ends
        if args.json:
            check_output_file(args.json)
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    return run_interruptible(PROG, _run, args, chosen, options, console)


def _run(args, chosen, options: runners.RunOptions, console) -> int:
    stale = runners.stale_cleanup()
    if stale:
        console.print(f"stopped {len(stale)} process(es) left by a killed run: {stale}")
    stale_tmp = remove_stale_temp_folders()
    if stale_tmp:
        console.print(stale_temp_line(stale_tmp), highlight=False, soft_wrap=True)
    parallel = 1 if args.port is not None else args.parallel
    console.print(f"{len(chosen)} scenario(s), {min(parallel, len(chosen))} at a time, deadline {args.timeout:g} s")
    started = time.monotonic()
    with Progress(console, [s.name for s, _ in chosen]) as progress:
        verdicts = runners.run_matrix(chosen, options, parallel=parallel, progress=progress)
    wall = time.monotonic() - started
    table = results_table(verdicts, title="Runner matrix", width=console.width, keys=("runner", "variant"))
    matched = print_results(console, verdicts, wall, args.log_dir, table)
    if args.json:
        from .versions import package_versions

        write_results(console, args.json, results_record(
            verdicts, "private redis-server (RQ, Huey, Dramatiq, Celery)", run_id=options.run_id,
            wall_seconds=round(wall, 2), timeout=args.timeout, stall=args.stall,
            runner_versions=package_versions(RUNNER_PACKAGES)))
    return EXIT_OK if matched else EXIT_MISMATCH
