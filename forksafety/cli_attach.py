"""The debugger CLIs behind ``scripts/gdb_attach_child.py`` and ``scripts/lldb_attach_child.py``.

Both run the fork demo in this process (this process is the demo's parent),
wait until the child is stuck -- polling its state with the hang rules of
``forksafety.watch``, no fixed sleep -- attach the debugger in batch mode,
write ``crash_dumps/<gdb|lldb>_<variant>_<time>.log``, detach, and stop the
child. lldb on macOS instead attaches to a gated child *before* it runs and
catches its crash (SIGTRAP / EXC_BREAKPOINT).

Exit codes: 0 the debugger recorded the stuck (or crashed) child, 1 the child
did not do what the variant is expected to do (nothing to attach to) or the
capture is incomplete, 2 usage or set-up error (debugger missing, ptrace not
permitted, bad option), 130 interrupted. No child or debugger outlives the script.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from . import procinfo
from .capture import (DEBUGGER_TIMEOUT, DebuggerCapture, check_ptrace_allowed, check_tool_runs, count_names,
                      debugger_report_sections, describe_snapshot, dump_path, gdb_capture, innermost_python_frame,
                      killed_by, last_line, lldb_capture, lldb_catch, require_tool, write_dump)
from .cli import (EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, MAX_SECONDS, Interrupted, OnceAction, Parser, check_log_dir,
                  check_output_file, fail, install_interrupt_handlers, path_arg, quiet_signals, say, seconds_type,
                  stdout_closed, sweep_leftovers, variant_type, written)
from .demo import DEFAULT_VARIANT, VARIANTS, DemoOptions, DemoRecord, DemoRun, expected_demo_outcome, record_json
from .errors import ForkSafetyError, UsageError
from .outcome import Outcome, current_platform
from .report import write_json
from .settings import REPO_ROOT, check_writable, load_settings
from .variants import DEMO

INSTALL = {"gdb": "install it: apt-get install gdb (Debian/Ubuntu), dnf install gdb (Fedora)",
           "lldb": "install it: apt-get install lldb (Debian/Ubuntu); on macOS: xcode-select --install"}
VERSION_CHECK_TIMEOUT = 10.0  # seconds `<debugger> --version` may take (set-up check, before the demo starts)


def build_parser(tool: str) -> Parser:
    """argparse parser of ``<tool>_attach_child.py`` (tool: gdb or lldb)."""
    prog = f"{tool}_attach_child.py"
    p = Parser(prog=prog, description=f"Run the fork demo, wait until the child is stuck, attach {tool} in batch "
               f"mode and record its threads, native backtraces, registers and the futex call; then detach and "
               f"stop the child.")
    p.add_argument("--variant", metavar="NAME", type=variant_type(DEMO), default=DEFAULT_VARIANT, action=OnceAction,
                   help=f"demo variant (default {DEFAULT_VARIANT}); attach needs one that hangs here "
                        f"({', '.join(hang_variants()) or 'none'})"
                        + ("" if tool == "gdb" else f", catch one that crashes ({', '.join(crash_variants()) or 'none'})"))
    p.add_argument("--timeout", type=seconds_type(), default=10.0, metavar="SECONDS",
                   help=f"how long to wait for the child to get stuck (default 10; 0.5 to {MAX_SECONDS:g})")
    p.add_argument(f"--{tool}", dest="tool_path", default=tool, metavar="PATH",
                   help=f"the {tool} binary (default: {tool} on PATH)")
    p.add_argument("--debugger-timeout", type=seconds_type(1.0), default=DEBUGGER_TIMEOUT, metavar="SECONDS",
                   help=f"how long {tool} may take to attach, record and detach before it is stopped "
                        f"(default {DEBUGGER_TIMEOUT:g}; 1 to {MAX_SECONDS:g})"
                        + ("" if tool == "gdb" else "; catch mode: --timeout plus this")
                        + f"; `{tool} --version` is checked first, within at most {VERSION_CHECK_TIMEOUT:g} s")
    p.add_argument("--command", dest="extra", action="append", default=[], metavar="CMD",
                   help=f"an extra {tool} command to record, before detaching (repeatable)")
    if tool == "gdb":
        p.add_argument("--python-stack", choices=("auto", "py-bt", "pystack", "py-spy"), default="auto",
                       help="where the Python stack comes from: auto (default: gdb's py-bt when CPython's gdb "
                            "extension is found, else pystack, else py-spy), or one of them")
    else:
        p.add_argument("--mode", choices=("auto", "attach", "catch"), default="auto",
                       help="attach: to the stuck child (Linux); catch: attach before the child runs and catch "
                            "its crash (macOS SIGTRAP); auto (default): catch on macOS, attach elsewhere")
    p.add_argument("--json", type=path_arg, metavar="PATH",
                   help="write the record (with every pid started) to PATH (an existing file is replaced, "
                        "and the output says so)")
    p.add_argument("--keep-data", action="store_true", help="keep the run's Chroma folder")
    p.add_argument("--log-dir", type=path_arg, default=REPO_ROOT / "crash_dumps", metavar="DIR",
                   help="where the log goes (default crash_dumps/ of this checkout, from any folder)")
    p.epilog = ("Every run first removes the Chroma folders demo-<variant>-<pid>-* of killed demo runs "
                "(their process is gone).")
    return p


def hang_variants(platform: str | None = None) -> list[str]:
    """Variants expected to hang on ``platform`` (default: this one)."""
    return [v for v in VARIANTS if expected_demo_outcome(v, platform).outcome is Outcome.HANG]


def crash_variants(platform: str | None = None) -> list[str]:
    """Variants expected to crash on ``platform`` (default: this one)."""
    return [v for v in VARIANTS if expected_demo_outcome(v, platform).outcome is Outcome.CRASH]


def demo_sections(run: DemoRun, rec: DemoRecord, snap: procinfo.ProcSnapshot | None) -> list:
    """The demo part of a debugger log: what ran, the threads, what /proc said before the attach."""
    lines = [f"variant: {rec.variant} -- {rec.summary}",
             f"demo parent pid {rec.parent_pid} (this script), child pid {rec.child_pid}",
             (f"child outcome before the attach: {rec.outcome_text()} after {rec.seconds:.3f} s"
              if rec.outcome is Outcome.HANG else
              f"child outcome under the debugger: {rec.outcome_text()} after {rec.seconds:.3f} s"),
             f"parent threads before the fork: {len(rec.parent_threads)}: {count_names(rec.parent_threads)}",
             f"not inherited by the child: {count_names(rec.lost_threads)}"]
    sections = [("demo", lines)]
    if snap is not None:
        sections.append(("child as /proc shows it before the attach", describe_snapshot(snap)))
    return sections


def _record(path: Path | None, rec: DemoRecord | None, tool: str, cap: DebuggerCapture | None,
            pids: dict, log: Path | None, ok: bool, replaced: bool = False) -> None:
    if path is None or rec is None:
        return
    extra = {"pids": pids, "debugger": tool, "capture_ok": ok, "log": str(log) if log else rec.log}
    if cap is not None:
        attached = _attached(tool, cap)
        extra[tool] = {"command": cap.command, "exit_code": cap.returncode, "attached": attached,
                       "detached": cap.detached and attached, "timed_out": cap.timed_out,
                       "python_stack_source": cap.python_stack_source,
                       "syscall": cap.syscall.to_dict() if cap.syscall else None}
    write_json(path, record_json(rec, **extra))
    written(path, replaced)


def _stop_reason(output: str) -> str | None:
    """The last ``stop reason = ...`` lldb printed that is not its own attach SIGSTOP."""
    reasons = [r for r in re.findall(r"stop reason = ([^\n]+)", output) if "SIGSTOP" not in r]
    return reasons[-1].strip() if reasons else None


def capture_ok(tool: str, cap: DebuggerCapture) -> bool:
    """A capture is complete when it has the backtrace of the stuck thread and the debugger detached."""
    return _attached(tool, cap) and cap.detached and not cap.timed_out


def attach_main(tool: str, argv: list[str] | None = None) -> int:
    """``gdb_attach_child.py`` / ``lldb_attach_child.py``; returns the exit code."""
    prog = f"{tool}_attach_child.py"
    args = build_parser(tool).parse_args(argv)
    mode = "attach"
    if tool == "lldb":
        mode = args.mode if args.mode != "auto" else ("catch" if current_platform() == "darwin" else "attach")
    try:
        allowed = hang_variants() if mode == "attach" else crash_variants()
        if args.variant not in allowed:
            what, missing = (("hangs", "no stuck child to attach to") if mode == "attach"
                             else ("crashes", "no crash to catch"))
            raise UsageError(f"variant {args.variant!r} is expected to end {expected_demo_outcome(args.variant)} "
                             f"on {current_platform()}: {missing}",
                             f"use a variant that {what} here: {', '.join(allowed) or '(none)'}")
        require_tool(args.tool_path, tool, INSTALL[tool])
        check_ptrace_allowed()
        settings = load_settings()
        check_writable(settings.chroma_dir)
        check_log_dir(args.log_dir)
        replaced = False
        if args.json:
            check_output_file(args.json)
            replaced = args.json.is_file()
        check_tool_runs([args.tool_path, "--version"], tool, f"point --{tool} at a working {tool}, or "
                        f"{INSTALL[tool]}", timeout=min(VERSION_CHECK_TIMEOUT, args.debugger_timeout))
    except ForkSafetyError as exc:
        return fail(exc, prog=prog)
    install_interrupt_handlers()
    pids: dict[str, int | None] = {"script": os.getpid()}

    def started(pid: int) -> None:
        pids[tool] = pid
        say(f"  {tool} pid {pid} (process group {pid})")

    options = DemoOptions(timeout=args.timeout, stacks=False, keep_data=args.keep_data, gate=(mode == "catch"))
    try:
        sweep_leftovers(settings.chroma_dir, strace_tmp=False)
    except Interrupted as exc:
        sys.stderr.write(f"{prog}: interrupted by {exc}: nothing was started\n")
        return EXIT_INTERRUPTED
    say(f"{prog}: variant {args.variant}: {VARIANTS[args.variant].summary}")
    run = DemoRun(args.variant, settings, options, progress=lambda t: say(f"  {t}"))
    rec: DemoRecord | None = None
    cap: DebuggerCapture | None = None
    log: Path | None = None
    try:
        try:
            try:
                run.start()
            except BrokenPipeError:  # our output was closed: not the demo failing
                raise
            except Exception as exc:  # noqa: BLE001 - chromadb failing to open the store: a set-up error
                return fail(f"the demo could not start: {type(exc).__name__}: {exc}", prog=prog)
            pids["child"] = run.child_pid
            if mode == "catch":
                rec, cap, log, code = _catch(run, args, started, prog)
            else:
                rec, cap, log, code = _attach(tool, run, args, started, prog)
        finally:
            restore = quiet_signals()
            try:
                run.close()
            finally:
                restore()
        if log is not None:
            say(f"log: {log}")
        _record(args.json, rec, tool, cap, pids, log, code == EXIT_OK, replaced)
        return code
    except Interrupted as exc:
        sys.stderr.write(f"{prog}: interrupted by {exc}: the child and {tool} are stopped\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` & co
        return stdout_closed(prog)
    except ForkSafetyError as exc:  # PtraceError from the attach, ToolMissingError
        return fail(exc, prog=prog)


def _attach(tool: str, run: DemoRun, args, started, prog: str):
    """Wait until the child is stuck, attach, record, detach. Returns (record, capture, log, exit code)."""
    say(f"  waiting up to {args.timeout:g} s for child {run.child_pid} to get stuck (polling /proc)")
    outcome, rule, sig, snap = run.watch()
    snap = run.refresh(snap)
    rec = run.make_record(outcome, rule, sig, snap)
    if outcome is not Outcome.HANG:
        say(f"the child did not hang: {rec.outcome_text()} ({rec.detail}); nothing to attach {tool} to")
        return rec, None, None, EXIT_MISMATCH
    say(f"  child {run.child_pid} is stuck ({rule}): {rec.syscall}; attaching {tool}")
    if tool == "gdb":
        cap = gdb_capture(run.child_pid, gdb=args.tool_path, python_stack=args.python_stack, extra=args.extra,
                          on_start=started, timeout=args.debugger_timeout)
    else:
        nr = snap.syscall.nr if snap is not None and snap.syscall is not None else None
        cap = lldb_capture(run.child_pid, lldb=args.tool_path, extra=args.extra, on_start=started, syscall_nr=nr,
                           timeout=args.debugger_timeout)
    sections = demo_sections(run, rec, snap) + debugger_report_sections(cap)
    log = write_dump(dump_path(args.log_dir, tool, rec.variant),
                     f"{tool} capture of the stuck demo child ({rec.variant})", sections)
    rec.log = str(log)
    run.stop_child()
    ok = capture_ok(tool, cap)
    _print_capture(tool, cap, ok)
    say(f"  child {run.child_pid} stopped (SIGKILL)" + (f" after {tool} detached" if ok else ""))
    return rec, cap, log, EXIT_OK if ok else EXIT_MISMATCH


def _attached(tool: str, cap: DebuggerCapture) -> bool:
    """True when the debugger got as far as a backtrace of the child (it attached)."""
    bt = cap.section("thread apply all bt") if tool == "gdb" else cap.section("bt all")
    return "#0 " in bt or "frame #0" in bt


def _print_capture(tool: str, cap: DebuggerCapture, ok: bool) -> None:
    if cap.timed_out:
        say(f"{tool} INCOMPLETE: it did not finish within {cap.timeout:g} s (--debugger-timeout): stopped it "
            f"and everything it started" + ("; the child is not traced any more" if cap.detached else ""))
    elif not _attached(tool, cap):
        said = last_line(cap.output)
        say(f"{tool} INCOMPLETE: exit {cap.returncode}, recorded no backtrace of the child"
            + (f"; {tool} said: {said}" if said else ""))
    elif killed_by(cap):
        say(f"{tool} INCOMPLETE: killed by {killed_by(cap)} (exit {cap.returncode}) before it detached; "
            "the kernel detached the child")
    else:
        state = "recorded" if ok else "INCOMPLETE"
        say(f"{tool} {state}: exit {cap.returncode}, detached {'cleanly' if cap.detached else 'NO'}")
    if cap.syscall is not None:
        for line in cap.syscall.lines()[1:]:
            say(f"  {line.strip()}")
    if cap.python_stack_source not in ("", "none"):
        frame = innermost_python_frame(cap)
        say(f"  Python stack from {cap.python_stack_source}"
            + (f"; innermost frame: {frame}" if frame else " (see the log)"))


def _catch(run: DemoRun, args, started, prog: str):
    """lldb catch mode: the gated child runs under lldb until it crashes. Returns
    (record, capture, log, exit code)."""
    assert run.gate_path is not None
    # lldb's `platform shell` does not honour shell redirections: dd opens the FIFO itself.
    release = f"dd if=/dev/zero of={shlex.quote(str(run.gate_path))} bs=1 count=1"
    say(f"  attaching lldb to child {run.child_pid} before it runs; lldb lets it go ({release}) and waits "
        f"up to {args.timeout + args.debugger_timeout:g} s for the crash")
    cap = lldb_catch(run.child_pid, release=release, lldb=args.tool_path, extra=args.extra,
                     timeout=args.timeout + args.debugger_timeout, on_start=started)
    reason = _stop_reason(cap.output)
    run.stop_child()
    rec = run.make_record(Outcome.CRASH if reason else Outcome.HANG, None, _signal_name(reason), None)
    rec.detail = f"lldb stop reason: {reason}" if reason else "lldb saw no crash before its timeout"
    sections = demo_sections(run, rec, None) + [("lldb stop reason", reason or "(none)")]
    sections += debugger_report_sections(cap)
    log = write_dump(dump_path(args.log_dir, "lldb", rec.variant),
                     f"lldb catch of the demo child's crash ({rec.variant})", sections)
    rec.log = str(log)
    ok = reason is not None and "bt all" in " ".join(t for t, _ in cap.sections)
    say(f"lldb {'caught' if ok else 'did NOT catch'} the crash: {reason or '-'}")
    return rec, cap, log, EXIT_OK if ok else EXIT_MISMATCH


def _signal_name(reason: str | None) -> str | None:
    """SIGTRAP for ``EXC_BREAKPOINT`` (macOS turns it into SIGTRAP) or ``signal SIGTRAP``."""
    if not reason:
        return None
    if "EXC_BREAKPOINT" in reason or "SIGTRAP" in reason or reason.startswith("trace"):
        return "SIGTRAP"
    match = re.search(r"signal (SIG\w+)", reason)
    return match.group(1) if match else None


def gdb_main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/gdb_attach_child.py."""
    return attach_main("gdb", argv)


def lldb_main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/lldb_attach_child.py."""
    return attach_main("lldb", argv)
