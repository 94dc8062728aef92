"""``make versions`` / ``scripts/versions.py``: the version matrix (see forksafety/versionsets.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import versionsets
from .broker import start_private_redis
from .cli import (EXIT_MISMATCH, EXIT_OK, Parser, check_log_dir, check_output_file, fail, install_interrupt_handlers,
                  path_arg, seconds_type, stdout_closed, written)
from .errors import ForkSafetyError, Interrupted
from .origins import load_origins
from .report import write_json
from .versions import platform_record
from .watch import sweep_run

PROG = "versions.py"


def build_parser() -> Parser:
    """The matrix's argparse parser."""
    names = [s.name for s in versionsets.SETS]
    p = Parser(prog=PROG, description="Build one environment per version set (versions/*.lock, hash-checked, "
               "cached in .versions/) and run the fork demo and the Celery prefork module-level scenario in each.")
    p.add_argument("--set", action="append", metavar="NAME", choices=names,
                   help=f"version set to run (repeatable; default: all): {', '.join(names)}")
    p.add_argument("--json", type=path_arg, metavar="PATH", help="write the results to PATH")
    p.add_argument("--cache", type=path_arg, default=versionsets.CACHE_DIR, metavar="DIR",
                   help="where the environments are kept (default .versions/)")
    p.add_argument("--build-timeout", type=seconds_type(), default=versionsets.BUILD_TIMEOUT, metavar="SECONDS",
                   help=f"bound of one pip install (default {versionsets.BUILD_TIMEOUT:g})")
    p.add_argument("--run-timeout", type=seconds_type(), default=versionsets.RUN_TIMEOUT, metavar="SECONDS",
                   help=f"bound of the demo, and of the Celery scenario, in one set (default {versionsets.RUN_TIMEOUT:g})")
    return p


def unknown_thread_names(results: list[versionsets.SetResult]) -> list[str]:
    """Thread names the table prints that `forksafety check`'s origin table does not know."""
    origins = load_origins()
    return [name for name in versionsets.thread_names(results) if origins.for_thread_name(name) is None]


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; 0 every set that ran matched its expected outcomes (skipped sets
    are fine), 1 one did not or failed to build, 2 usage, 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        check_log_dir(args.cache, option="--cache")
        replaced = check_output_file(args.json) if args.json else False
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    sets = [s for s in versionsets.SETS if not args.set or s.name in args.set]
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    os.environ[versionsets.TAG_ENV] = run_id  # every process we start inherits it
    install_interrupt_handlers()
    broker = None
    started = time.monotonic()
    try:
        broker = start_private_redis(run_id)
        results = versionsets.run_matrix(sets, broker.url, run_id, cache=args.cache,
                                         progress=lambda line: print(f"{time.monotonic() - started:6.1f}s {line}",
                                                                     flush=True),
                                         build_timeout=args.build_timeout, run_timeout=args.run_timeout)
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    except BrokenPipeError:  # output piped into `head` & co
        return stdout_closed(PROG)
    except Interrupted as exc:
        sys.stderr.write(f"{PROG}: interrupted by {exc}: every process of this run was stopped; "
                         "an environment whose build was cut short is rebuilt next time\n")
        return exc.exit_code
    finally:
        if broker is not None:
            broker.cleanup()
        sweep_run(run_id, name=versionsets.TAG_ENV)
    wall = time.monotonic() - started
    plat = platform_record()
    problems = [f"{r.name}: {r.status}" for r in results if r.status.startswith("failed")]
    origins = load_origins()
    for r in results:
        if r.status == "ran":
            r.expected = versionsets.expect(r, versionsets.unsafe_by(origins))
            for label, ok in versionsets.matched(r).items():
                if not ok:
                    record = getattr(r, label)
                    problems.append(f"{r.name}: {label} outcome {versionsets.record_text(record)}, expected "
                                    f"{r.expected.get(label)}: {str(record.get('detail', ''))[:200]}")
    unknown = unknown_thread_names(results)
    if unknown:
        problems.append(f"thread names not in forksafety/threadorigins.json: {', '.join(unknown)}")
    print(f"\nVersion matrix on {plat['system']} {plat['machine']} ({wall:.0f} s wall):")
    print(versionsets.text_table(results))
    for line in problems:
        print(f"  {line}")
    if args.json:
        write_json(args.json, {"platform": plat, "wall_seconds": round(wall, 1), "run_id": run_id,
                               "table": versionsets.text_table(results),
                               "results": [r.to_dict() for r in results]})
        written(Path(args.json).resolve(), replaced)
    return EXIT_MISMATCH if problems else EXIT_OK
