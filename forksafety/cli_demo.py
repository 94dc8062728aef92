"""The fork demo CLI behind ``scripts/demo_crash.py`` (and its ``--strace`` mode).

Exit codes: 0 the outcome is the one expected for the variant on this platform,
1 it is not, 2 usage or set-up error (unknown variant, bad timeout, unwritable
path, strace missing), 130 interrupted (the child is stopped first).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import asdict

from .capture import (
    check_tool_runs,
    count_names,
    dump_path,
    find_unfinished_futex,
    require_tool,
    run_tool,
    strace_command,
    write_dump,
)
from .cli import (
    EXIT_INTERRUPTED,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_USAGE,
    MAX_SECONDS,
    MIN_SECONDS,
    Interrupted,
    OnceAction,
    Parser,
    check_log_dir,
    check_output_file,
    fail,
    install_interrupt_handlers,
    int_range,
    path_arg,
    quiet_signals,
    remove_stale_strace_folders,  # noqa: F401 - kept importable from here (tests, issue 13)
    say,
    seconds_type,
    stdout_closed,
    sweep_leftovers,
    variant_type,
    written,
)
from .demo import (
    DEFAULT_DOCUMENTS,
    DEFAULT_VARIANT,
    VARIANTS,
    DemoOptions,
    DemoRecord,
    DemoRun,
    expected_demo_outcome,
    record_json,
    record_sections,
)
from .errors import ForkSafetyError
from .outcome import Outcome, current_platform
from .report import write_json
from .settings import REPO_ROOT, check_writable, load_settings
from .variants import ALIASES, DEMO
from .versions import header_lines
from .watch import RULE_DEADLINE, make_temp_dir, set_parent_death_signal

PROG = "demo_crash.py"
SCRIPT = REPO_ROOT / "scripts" / "demo_crash.py"
STRACE_STARTUP = 120.0  # seconds strace may add on top of --timeout (start-up under ptrace is slow)
STRACE_CHECK_TIMEOUT = 10.0  # seconds strace may take to trace `true` before the run (set-up check)
MAX_DOCUMENTS = 10000  # bound of --documents
SHORT_DEADLINE = 5.0  # below this --timeout, a HANG by deadline gets a note (a slow child may just need longer)
# Set (to the outer script's pid) in the environment of the demo that --strace runs under strace:
# that demo then dies with strace (PR_SET_PDEATHSIG) and leaves the printing of the end to the outer script.
UNDER_STRACE_ENV = "FORKSAFETY_DEMO_UNDER_STRACE"


def build_parser() -> Parser:
    """The demo's argparse parser."""
    names = ", ".join(VARIANTS)
    old_names = ", ".join(f"{old} (= {new})" for old, new in ALIASES.items())
    p = Parser(prog=PROG, description="Fork a child after opening a ChromaDB store in the parent and report "
               "what happens to the child: PASS, HANG (with evidence), CRASH <signal> or ERROR.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fixed", action="store_true",
                       help="the fix: create the store only in the child, after the fork (= --variant fixed)")
    which.add_argument("--variant", metavar="NAME", type=variant_type(DEMO), action=OnceAction,
                       help=f"what parent and child do (default {DEFAULT_VARIANT}): {names}; see --list. "
                            f"Older names still accepted: {old_names}")
    p.add_argument("--list", action="store_true", help="list the variants with their expected outcomes and exit")
    p.add_argument("--timeout", type=seconds_type(), default=10.0, metavar="SECONDS",
                   help=f"how long the parent waits for the child (default 10; {MIN_SECONDS:g} to {MAX_SECONDS:g}). "
                        f"A HANG by 'deadline' only means no result within it: the variants that finish take up "
                        f"to ~2 s")
    p.add_argument("--stall", type=seconds_type(), default=2.0, metavar="SECONDS",
                   help=f"window of the 'stalled' hang rule (default 2; {MIN_SECONDS:g} to {MAX_SECONDS:g})")
    p.add_argument("--full-timeout", action="store_true",
                   help="wait the whole --timeout even when the deadlock is already proven")
    p.add_argument("--documents", type=int_range(MAX_DOCUMENTS), default=DEFAULT_DOCUMENTS, metavar="N",
                   help=f"documents the child adds in one call (default {DEFAULT_DOCUMENTS}, at most "
                        f"{MAX_DOCUMENTS}; other-dir behaves differently with 1)")
    p.add_argument("--json", type=path_arg, metavar="PATH",
                   help="write the record to PATH (an existing file is replaced, and the output says so)")
    p.add_argument("--strace", action="store_true",
                   help="run the demo under strace -f -tt; the trace goes to crash_dumps/strace_<variant>_<time>.trace")
    p.add_argument("--strace-path", metavar="PATH", help="strace binary (with --strace; default: strace on PATH)")
    p.add_argument("--no-stacks", action="store_true", help="skip py-spy/pystack stacks of a hung child")
    p.add_argument("--keep-data", action="store_true", help="keep the run's Chroma folder")
    p.add_argument("--log-dir", type=path_arg, default=REPO_ROOT / "crash_dumps", metavar="DIR",
                   help="where logs and traces go (default crash_dumps/ of this checkout, from any folder)")
    p.epilog = ("Every run first removes what killed runs left behind: Chroma folders demo-<variant>-<pid>-* "
                "whose process is gone, and temporary folders forksafety-strace-<pid>-* of --strace runs.")
    return p


def list_variants() -> str:
    """The variants as text: name, expected outcome here, what it does, how it was measured."""
    lines = []
    for v in VARIANTS.values():
        lines.append(f"{v.name:<21} expected {expected_demo_outcome(v.name)!s:<13} {v.summary}")
        if v.expected_one_document:
            lines.append(f"{'':<21} with --documents 1: expected {expected_demo_outcome(v.name, documents=1)}")
        if v.measured:
            lines.append(f"{'':<21} measured on Linux: {v.measured}")
    return "\n".join(lines)


def print_record(rec: DemoRecord) -> None:
    """The outcome and its evidence, as the user reads it."""
    verdict = "matched" if rec.matched else "DID NOT MATCH"
    say(f"{rec.outcome_text()} after {rec.seconds:.2f} s -- expected {rec.expected} on {current_platform()}: {verdict}")
    if rec.outcome is Outcome.HANG:
        if rec.rule == RULE_DEADLINE and rec.timeout < SHORT_DEADLINE:
            say(f"  note: no hang rule fired; the child only had no result within --timeout {rec.timeout:g} s, "
                f"which is short (the variants that finish take up to ~2 s): use --timeout {SHORT_DEADLINE:g} or more")
        say(f"  child {rec.child_pid}: state {rec.child_state}, wchan {rec.child_wchan}")
        say(f"  syscall: {rec.syscall}  (/proc/{rec.child_pid}/syscall: {rec.syscall_raw})")
        if rec.futex:
            say(f"  futex: {rec.futex.get('op_name')} at {hex(rec.futex['uaddr'])}, expected value {rec.futex['val']}, "
                f"value now {rec.futex.get('value_now')}, timeout {'NULL' if rec.futex['timeout'] == 0 else 'set'}")
        say(f"  threads: child {len(rec.child_threads)}, parent {len(rec.parent_threads)}; "
            f"not inherited: {count_names(rec.lost_threads)}")
        if rec.child_new_threads:
            say(f"  started by the child after the fork: {count_names(rec.child_new_threads)}")
        say(f"  child {rec.child_pid} stopped (SIGKILL)")
    else:
        say(f"  {rec.detail}")


def under_strace() -> bool:
    """True in the demo that ``--strace`` runs under strace (the inner demo)."""
    return bool(os.environ.get(UNDER_STRACE_ENV))


def die_with_strace() -> bool:
    """In the inner demo: ask for SIGKILL when strace (our parent) dies (prctl(2)
    PR_SET_PDEATHSIG), so a SIGKILLed outer script (strace has PDEATHSIG too)
    leaves nothing behind. Returns False when the outer script is already gone
    (strace died before the prctl): the caller then exits at once."""
    set_parent_death_signal(signal.SIGKILL)
    try:
        import psutil

        return psutil.Process(os.getppid()).ppid() == int(os.environ[UNDER_STRACE_ENV])
    except (ValueError, OSError, psutil.Error):
        return False


def run_demo(args, variant: str, settings) -> tuple[int, DemoRecord | None]:
    """Run the demo in this process; returns (exit code, record)."""
    options = DemoOptions(timeout=args.timeout, stall=args.stall, early_verdict=not args.full_timeout,
                          stacks=not args.no_stacks, keep_data=args.keep_data, documents=args.documents)
    say(f"{PROG}: variant {variant}: {VARIANTS[variant].summary}")
    run = DemoRun(variant, settings, options, progress=lambda t: say(f"  {t}"))
    try:
        rec = run.run()
    finally:
        restore = quiet_signals()
        try:
            run.close()
        finally:
            restore()
    sections = rec.extra.pop("sections", [])
    path = write_dump(dump_path(args.log_dir, "demo", variant), f"fork demo ({variant})",
                      record_sections(rec) + sections)
    rec.log = str(path)
    print_record(rec)
    if args.keep_data:
        say(f"  data kept in {run.data_dir}")
    say(f"log: {path}")
    return (EXIT_OK if rec.matched else EXIT_MISMATCH), rec


def run_strace(args, variant: str, replaced: bool) -> int:
    """Run the demo under ``strace -f -tt`` and point at the child's unfinished futex call."""
    trace = dump_path(args.log_dir, "strace", variant, suffix="trace")
    tmp = make_temp_dir("strace")
    try:
        inner_json = tmp / "demo.json"
        inner = [sys.executable, str(SCRIPT), "--variant", variant, "--timeout", f"{args.timeout:g}",
                 "--stall", f"{args.stall:g}", "--documents", str(args.documents), "--json", str(inner_json),
                 "--no-stacks", "--log-dir", str(args.log_dir)]
        if args.keep_data:
            inner.append("--keep-data")
        if args.full_timeout:
            inner.append("--full-timeout")
        command = strace_command(trace, inner, strace=args.strace_path)
        header = "\n".join(header_lines(command, f"strace of the fork demo ({variant})")) + "\n"
        trace.write_text(header)
        say(f"{PROG}: running the demo under strace: {' '.join(command)}")
        pids: dict[str, int] = {"script": os.getpid()}

        def started(pid: int) -> None:
            pids["strace"] = pid
            say(f"  strace pid {pid} (process group {pid})")

        env = {**os.environ, UNDER_STRACE_ENV: str(os.getpid())}
        out = run_tool(command, timeout=args.timeout + STRACE_STARTUP, on_start=started, capture=False,
                       cwd=REPO_ROOT, env=env)
        if out.pid is None:
            return fail(f"could not run strace ({args.strace_path}): {out.output.strip()}: point --strace-path "
                        f"at a working strace, or install it: apt-get install strace", EXIT_USAGE, PROG)
        if out.returncode is None:
            return fail(f"strace did not finish within {args.timeout + STRACE_STARTUP:g} s: stopped it and "
                        f"everything under it (trace so far: {trace})", EXIT_MISMATCH, PROG)
        try:
            record = json.loads(inner_json.read_text())
        except (OSError, ValueError):
            if out.returncode != 0 and trace.read_text(errors="replace") == header:
                return fail(f"could not run strace ({args.strace_path}): it exited {out.returncode} without "
                            f"tracing anything (its message is above)", EXIT_USAGE, PROG)
            return fail(f"the demo under strace wrote no record (strace exit {out.returncode}); see {trace}",
                        EXIT_MISMATCH, PROG)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    child = record.get("child_pid")
    call = find_unfinished_futex(trace.read_text(errors="replace"), child) if child else None
    hang_expected = expected_demo_outcome(variant, documents=args.documents).outcome is Outcome.HANG
    say(f"trace: {trace}")
    if call is not None:
        say(f"  child {child}: unfinished futex call at line {call.line_number} ({call.ended}):")
        say(f"    {call.line}")
        if call.before:
            say("  what the child did just before it:")
            for line in call.before:
                say(f"    {line[:200]}")
    else:
        say(f"  child {child}: no unfinished futex call in the trace")
    record["pids"] = {**pids, "demo_parent": record.get("parent_pid"), "child": child}
    record["strace"] = {"trace": str(trace), "command": command, "exit_code": out.returncode,
                        "unfinished_futex": asdict(call) if call else None}
    if args.json:
        write_json(args.json, record)
        written(args.json, replaced)
    ok = bool(record.get("matched")) and (call is not None or not hang_expected)
    return EXIT_OK if ok else EXIT_MISMATCH


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code (0 matched, 1 not, 2 usage/set-up, 130 interrupted)."""
    inner = under_strace()
    if inner and not die_with_strace():
        return EXIT_INTERRUPTED  # the script that ran strace is gone: nothing to report to
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strace_path is not None and not args.strace:
        parser.error("--strace-path is used only with --strace: add --strace, or drop --strace-path")
    args.strace_path = args.strace_path or "strace"
    if args.list:
        print(list_variants())
        return EXIT_OK
    variant = "fixed" if args.fixed else (args.variant or DEFAULT_VARIANT)
    replaced = False
    try:
        settings = load_settings()
        check_writable(settings.chroma_dir)
        check_log_dir(args.log_dir)
        if args.json:
            check_output_file(args.json)
            replaced = args.json.is_file()
        if args.strace:
            require_tool(args.strace_path, "strace", "install it: apt-get install strace (Linux only)")
            check_tool_runs([args.strace_path, "-f", "-o", os.devnull, *true_command()], "strace",
                            "point --strace-path at a working strace, or install it: apt-get install strace",
                            timeout=STRACE_CHECK_TIMEOUT)
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)
    install_interrupt_handlers()
    try:
        if not inner:
            sweep_leftovers(settings.chroma_dir)
        if args.strace:
            return run_strace(args, variant, replaced)
        code, rec = run_demo(args, variant, settings)
        if args.json and rec is not None:
            write_json(args.json, record_json(rec, pids={"parent": rec.parent_pid, "child": rec.child_pid}))
            if not inner:  # the inner demo's record is a temporary file: the outer script reports its own
                written(args.json, replaced)
        return code
    except Interrupted as exc:
        if not inner:  # under strace, the outer script says it once
            sys.stderr.write(f"{PROG}: interrupted by {exc}: the child and the tools we started are stopped\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` & co
        return stdout_closed(PROG)
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)


def true_command() -> list[str]:
    """A command that does nothing and exits 0 (``true``; this Python when there is none)."""
    found = shutil.which("true")
    return [found] if found else [sys.executable, "-c", ""]


if __name__ == "__main__":
    sys.exit(main())
