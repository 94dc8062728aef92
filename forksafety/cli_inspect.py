"""``forksafety inspect PID...``: is this process stuck now, and why? (see forksafety/diagnose.py)

    forksafety inspect 4242
    forksafety inspect $(pgrep -P WORKER_MAIN_PID) --window 1.5   # the prefork pool children

Exit codes: 0 no process is stuck, 1 one is (deadlock-proven or stalled), 2 bad
usage, or a pid that does not exist or may not be traced (one line each; the
other pids are still inspected), 130 interrupted. The inspected processes are
never stopped or changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .capture import count_names
from .cli import (EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, Interrupted, Parser, check_log_dir, fail,
                  install_interrupt_handlers, path_arg, positive_float, positive_int, stdout_closed)
from .diagnose import Inspection, inspect_pid, write_capture
from .errors import ForkSafetyError

PROG = ("forksafety" if os.path.basename(sys.argv[0]) == "forksafety" else "python -m forksafety") + " inspect"
STACK_CHOICES = ("auto", "always", "never")


def build_parser() -> Parser:
    """The argparse parser of ``forksafety inspect``."""
    p = Parser(prog=PROG, description="Say whether each process is stuck now (deadlock-proven, stalled, or not "
               "stuck, with the reason), the threads it lost in the fork compared with its parent, the futex it "
               "waits on, its Python and native stacks (py-spy, pystack) and the fix; write the evidence to "
               "crash_dumps/. The processes are never stopped or changed.")
    p.add_argument("pids", nargs="+", type=positive_int, metavar="PID", help="process id(s) to inspect")
    p.add_argument("--window", type=positive_float, default=1.0, metavar="SECONDS",
                   help="how long to watch a process that is not a proven deadlock: the 'stalled' rule's window "
                        "(default 1)")
    p.add_argument("--stacks", choices=STACK_CHOICES, default="auto",
                   help="py-spy/pystack stacks: auto (when stuck, default), always, never")
    p.add_argument("--log-dir", type=path_arg, default=Path("crash_dumps"), metavar="DIR",
                   help="where the capture file goes (default crash_dumps/ in the current folder)")
    return p


def report_lines(r: Inspection) -> list[str]:
    """What the terminal shows for one inspection."""
    lines = [f"pid {r.pid} ({r.name}): {r.verdict.upper()} (watched {r.observed_seconds:.2f} s)",
             f"  why: {r.reason}"]
    threads = f"  threads: {len(r.snapshot.threads)} ({count_names(r.snapshot.thread_names)})"
    if r.parent_pid is None:
        threads += "; parent gone (or init): nothing to compare with"
    elif r.same_program:
        threads += (f"; parent pid {r.parent_pid} has {len(r.parent_threads or [])}: lost in the fork: "
                    f"{count_names(r.lost) if r.lost else 'none'}")
    else:
        threads += f"; parent pid {r.parent_pid} runs another program (exec): no fork to compare"
    lines.append(threads)
    if r.futex:
        lines.append(f"  futex: {r.futex[0].split(': ', 1)[-1]}")
        lines += [f"  {line.strip()}" for line in r.futex[1:]]
    elif r.snapshot.syscall is not None:
        lines.append(f"  main thread in: {r.snapshot.syscall.describe()} ({r.snapshot.syscall.wait} wait)")
    if r.stacks:
        lines += [f"  stacks: {line}" for line in r.stacks]
    elif r.want_stacks is False and r.stuck:
        lines.append("  stacks: not taken (--stacks never)")
    if r.top_frame:
        lines.append(f"  innermost Python frame: {r.top_frame}")
    for name, origin, fix in r.fixes:
        lines.append(f"  fix ({name}: {origin}): {fix}")
    if r.capture_file:
        lines.append(f"  evidence: {r.capture_file}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``forksafety inspect``; returns the exit code."""
    args = build_parser().parse_args(argv)
    command = [PROG, *(sys.argv[2:] if argv is None else argv)]
    install_interrupt_handlers()
    code = EXIT_OK
    try:
        check_log_dir(args.log_dir)
        for pid in args.pids:
            try:
                result = inspect_pid(pid, window=args.window, stacks=args.stacks)
                write_capture(result, args.log_dir, command)
            except ForkSafetyError as exc:
                code = fail(exc, prog=PROG)  # its exit code (errors.exit_code_of): 2
                continue
            print("\n".join(report_lines(result)), flush=True)
            if result.stuck and code == EXIT_OK:
                code = EXIT_MISMATCH
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    except BrokenPipeError:  # output piped into `head` & co: stop quietly
        return stdout_closed(PROG)
    except Interrupted as exc:
        sys.stderr.write(f"{PROG}: interrupted by {exc}: the inspected processes were not touched\n")
        return EXIT_INTERRUPTED
    return code
