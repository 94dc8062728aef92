"""The fork demo CLI behind ``scripts/demo_crash.py`` (and its ``--strace`` mode).

Exit codes: 0 the outcome is the one expected for the variant on this platform,
1 it is not, 2 usage or set-up error (unknown variant, bad timeout, unwritable
path, strace missing), 130 interrupted (the child is stopped first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

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
    Interrupted,
    Parser,
    fail,
    install_interrupt_handlers,
    int_range,
    path_arg,
)
from .demo import (
    DEFAULT_DOCUMENTS,
    DEFAULT_VARIANT,
    VARIANTS,
    DemoOptions,
    DemoRecord,
    DemoRun,
    expected_demo_outcome,
    record_sections,
    remove_stale_demo_folders,
)
from .errors import ForkSafetyError, UsageError
from .outcome import Outcome, current_platform
from .report import write_json
from .settings import REPO_ROOT, check_writable, load_settings
from .versions import header_lines, package_versions, platform_record
from .watch import RULE_DEADLINE, make_temp_dir, remove_stale_temp_folders, set_parent_death_signal

PROG = "demo_crash.py"
SCRIPT = REPO_ROOT / "scripts" / "demo_crash.py"
STRACE_STARTUP = 120.0  # seconds strace may add on top of --timeout (start-up under ptrace is slow)
STRACE_CHECK_TIMEOUT = 10.0  # seconds strace may take to trace `true` before the run (set-up check)
MIN_SECONDS, MAX_SECONDS = 0.5, 3600.0  # bounds of --timeout and --stall
MAX_DOCUMENTS = 10000  # bound of --documents
SHORT_DEADLINE = 5.0  # below this --timeout, a HANG by deadline gets a note (a slow child may just need longer)
# Set (to the outer script's pid) in the environment of the demo that --strace runs under strace:
# that demo then dies with strace (PR_SET_PDEATHSIG) and leaves the printing of the end to the outer script.
UNDER_STRACE_ENV = "FORKSAFETY_DEMO_UNDER_STRACE"


def seconds_type(low: float = MIN_SECONDS, high: float = MAX_SECONDS):
    """argparse type: a number of seconds in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not value > 0 or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds ({low:g} to {high:g})")
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low:g} seconds: a shorter wait "
                                             f"cannot tell a stuck child from one still starting")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {high:g} seconds")
        return value

    return parse


class OnceAction(argparse.Action):
    """Store an option's value; the same option given again with another value is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_given_{self.dest}"
        before = getattr(namespace, seen, None)
        if before is not None and before != values:
            parser.error(f"{option_string} given twice ({before} and {values}): give it once")
        setattr(namespace, seen, values)
        setattr(namespace, self.dest, values)


def build_parser() -> Parser:
    """The demo's argparse parser."""
    names = ", ".join(VARIANTS)
    p = Parser(prog=PROG, description="Fork a child after opening a ChromaDB store in the parent and report "
               "what happens to the child: OK, HANG (with evidence), CRASH <signal> or ERROR.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fixed", action="store_true",
                       help="the fix: create the store only in the child, after the fork (= --variant fixed)")
    which.add_argument("--variant", metavar="NAME", choices=list(VARIANTS), action=OnceAction,
                       help=f"what parent and child do (default {DEFAULT_VARIANT}): {names}; see --list")
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
                   help="where logs and traces go (default crash_dumps/)")
    p.epilog = ("Every run first removes what killed runs left behind: Chroma folders demo-<variant>-<pid>-* "
                "whose process is gone, and temporary folders forksafety-strace-<pid>-* of --strace runs.")
    return p


def check_output_file(path: Path, option: str = "--json") -> None:
    """Raise UsageError when a file cannot be written at ``path`` (checked before any work)."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory", "give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path} is not writable ({exc.strerror or exc})",
                         "choose a file in a writable folder") from None


def check_log_dir(path: Path) -> None:
    """Raise UsageError when ``path`` cannot hold our logs."""
    try:
        check_writable(path, what="--log-dir", fix="choose a writable folder")
    except ForkSafetyError as exc:
        raise UsageError(exc.message, exc.help) from None


def record_json(rec: DemoRecord, **extra: object) -> dict:
    """The JSON record: platform and versions, then the DemoRecord fields, then ``extra``."""
    plat = platform_record()
    data = rec.to_dict()
    data.get("extra", {}).pop("sections", None)
    return {"platform": plat["platform"], "machine": plat["machine"], "system": plat["system"],
            "python": plat["python"], "versions": package_versions(), **data, **extra}


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


def say(text: str) -> None:
    """Print one progress line now (the demo's output is read live by users and tests)."""
    print(text, flush=True)


def quiet_signals():
    """Ignore SIGINT/SIGTERM while cleaning up, so a second Ctrl-C cannot cut the cleanup
    short (main thread only: signal.signal's rule). Returns the function that restores them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    return lambda: [signal.signal(s, h) for s, h in old.items()]


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


def written(path: Path, replaced: bool) -> None:
    """Say where the record went, and that an existing file was replaced (never silently)."""
    say(f"record written to {path}" + (" (replaced the previous file)" if replaced else ""))


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


def remove_stale_strace_folders(tmp: Path | None = None) -> list[Path]:
    """Remove the temporary folders ``forksafety-strace-<pid>-*`` of --strace runs
    that were killed (their pid is gone). Returns the folders removed."""
    return remove_stale_temp_folders(tmp, kinds=("strace",))


def sweep_leftovers(chroma_dir: Path, strace_tmp: bool = True) -> None:
    """Remove what killed runs left (Chroma folders, --strace temporary folders), one line each."""
    stale = remove_stale_demo_folders(chroma_dir)
    if stale:
        say(f"removed {len(stale)} Chroma folder(s) left by killed demo runs under {chroma_dir}: "
            f"{', '.join(f.name for f in stale)}")
    if strace_tmp:
        tmp = remove_stale_strace_folders()
        if tmp:
            say(f"removed {len(tmp)} temporary folder(s) left by killed --strace runs: "
                f"{', '.join(str(f) for f in tmp)}")


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
    except ForkSafetyError as exc:
        return fail(exc, prog=PROG)


def true_command() -> list[str]:
    """A command that does nothing and exits 0 (``true``; this Python when there is none)."""
    found = shutil.which("true")
    return [found] if found else [sys.executable, "-c", ""]


if __name__ == "__main__":
    sys.exit(main())
