"""``python -m forksafety check|lab``: the command line of the fork-safety checker.

    python -m forksafety check pkg.tasks
    python -m forksafety check path/to/tasks.py --json report.json
    python -m forksafety check -A celery_examples.tasks_pool_test --probe add_documents_task --args '[["hi"]]'
    python -m forksafety lab --all

check exit codes: 0 SAFE (and the probe, if any, finished PASS); 1 RISK or UNSAFE,
or a probe that did not finish PASS; 2 bad usage (a --json or --log-dir path that
cannot be written is reported before any work), or a target that cannot be
imported (with the import's own error shown); 130 interrupted.
lab exit codes: 0 every case right, 1 one was not, 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import threading
import time
from pathlib import Path

from .check import (PROBE_CAPTURE, CheckRequest, CheckRun, Report, format_report, module_file,
                    run_check)
from .cli import (EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, Interrupted, Parser, check_log_dir,
                  OnceAction, check_output_file, fail, file_above, install_interrupt_handlers, path_arg, positive_float,
                  positive_int, stdout_closed)
from .errors import ForkSafetyError, UsageError
from .outcome import outcome_text

# the console script says `forksafety`, `python -m forksafety` says so
PROG = "forksafety" if os.path.basename(sys.argv[0]) == "forksafety" else "python -m forksafety"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_MODULE_RE = re.compile(rf"^{_DOTTED}$")
_PROBE_RE = re.compile(rf"^{_DOTTED}(:{_DOTTED})?$")
_TASK_NAME_RE = re.compile(r"^[^\s:]+$")  # a Celery task name (-A): any name without blanks or ':'
PROBE_FORMS = "NAME or a.b (in the target), or module:callable (pkg.tasks:add)"


def build_parser() -> Parser:
    """The argparse parser with the ``check`` and ``lab`` subcommands."""
    p = Parser(prog=PROG, description="Tell before you deploy whether a fork() of your worker is safe.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    c = sub.add_parser("check", help="import a module, file or Celery app and report what a fork would break",
                       description="Import TARGET in a fresh interpreter (bounded by --timeout) and report the "
                                   "threads, SQLite databases, sockets and objects a fork() would copy, with a "
                                   "verdict (SAFE, RISK, UNSAFE) and the fix for each finding.")
    c.add_argument("target", nargs="?", help="a module (pkg.tasks) or a file (path/to/tasks.py)")
    c.add_argument("-A", "--app", metavar="APP", help="a Celery app, as for `celery -A` (proj, proj.celery:app)")
    c.add_argument("--probe", metavar="CALLABLE",
                   help="fork, then call CALLABLE in the child (a name in the target, or module:callable) "
                        "and report PASS, HANG, CRASH <signal> or ERROR")
    c.add_argument("--args", metavar="JSON",
                   help="arguments for --probe: a JSON list (positional) or object (keywords)")
    from .guard import RUNNER_FIXES

    runners = ", ".join(RUNNER_FIXES)
    c.add_argument("--runner", choices=list(RUNNER_FIXES), metavar="NAME", action=OnceAction,
                   help=f"the runner that will fork this code, for its fix: {runners} "
                        "(default: the one the check can tell: a Celery app, or the library the target imports)")
    c.add_argument("--json", type=path_arg, metavar="PATH", help="write the full record to PATH")
    _bounds(c, timeout=(30.0, "the target's import"), probe_timeout=(15.0, "the probe child"),
            capture=("full", "a hung probe child: full (py-spy + pystack, default), light, none"),
            log_dir="probe evidence")

    lab = sub.add_parser("lab", help="run the case corpus: observed outcome of a real fork vs the check's verdict",
                         description="Fork each case of forksafety/cases, record what happens in the child, run "
                                     "check on it, and print both side by side with the agreement figure.")
    lab.add_argument("--case", action="append", metavar="NAME", help="a case to run (repeatable); see --list")
    lab.add_argument("--all", action="store_true", help="every case")
    lab.add_argument("--list", action="store_true", help="list the cases and exit")
    lab.add_argument("--json", type=path_arg, metavar="PATH", help="write the lab record to PATH")
    lab.add_argument("--repeat", type=positive_int, default=1, metavar="N", help="runs per case (default 1)")
    lab.add_argument("--parallel", type=positive_int, default=max(1, os.cpu_count() or 1), metavar="N",
                     help="cases at once (default: the number of CPUs)")
    _bounds(lab, timeout=(60.0, "each case's import"), probe_timeout=(10.0, "each forked child"),
            capture=("light", "hung children: full (py-spy + pystack), light (default), none"), log_dir="evidence")
    return p


def _bounds(p: Parser, timeout: tuple[float, str], probe_timeout: tuple[float, str], capture: tuple[str, str],
            log_dir: str) -> None:
    """The options check and lab share: --timeout, --probe-timeout, --stall (seconds),
    --capture and --log-dir, with their defaults and what each bounds."""
    p.add_argument("--timeout", type=positive_float, default=timeout[0], metavar="SECONDS",
                   help=f"bound on {timeout[1]} (default {timeout[0]:g})")
    p.add_argument("--probe-timeout", type=positive_float, default=probe_timeout[0], metavar="SECONDS",
                   help=f"bound on {probe_timeout[1]} (default {probe_timeout[0]:g})")
    p.add_argument("--stall", type=positive_float, default=2.0, metavar="SECONDS",
                   help="window of the 'stalled' hang rule (default 2)")
    p.add_argument("--capture", choices=PROBE_CAPTURE, default=capture[0], help=f"evidence from {capture[1]}")
    p.add_argument("--log-dir", type=path_arg, default=Path("crash_dumps"), metavar="DIR",
                   help=f"where {log_dir} goes (default crash_dumps/ in the current folder)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m forksafety``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [PROG, *(sys.argv[1:] if argv is None else argv)]
    if args.command is None:
        return fail(f"choose a command: check or lab (see {PROG} --help)", prog=PROG)
    install_interrupt_handlers()
    try:
        return check_main(args) if args.command == "check" else lab_main(args)
    except BrokenPipeError:  # output piped into `head` & co: stop quietly
        return stdout_closed(PROG)
    except Interrupted as exc:
        sys.stderr.write(f"{PROG}: interrupted by {exc}: every process we started was stopped\n")
        return EXIT_INTERRUPTED
    except ForkSafetyError as exc:
        return fail(exc, prog=f"{PROG} {args.command}")


# ------------------------------------------------------------------------------ check
def build_request(args) -> CheckRequest:
    """CheckRequest from the parsed ``check`` arguments. Raises UsageError for a
    missing or doubled target, a missing file (or a folder, or a device), a
    malformed module name, a malformed --probe or bad --args."""
    if bool(args.target) == bool(args.app):
        raise UsageError("give exactly one target", "a module, a file, or -A APP")
    if args.app:
        kind, target = "app", args.app
    elif args.target.endswith(".py") or os.sep in args.target or "/" in args.target:
        kind, target = "file", args.target
        _check_target_file(target)
        target = str(Path(target).resolve())
    else:
        kind, target = "module", args.target
        if not _MODULE_RE.match(target):
            raise UsageError(f"{target!r} is not a module name", "use dotted names (pkg.tasks) or a path to a .py file")
    if args.probe is not None:
        form = _TASK_NAME_RE if kind == "app" and ":" not in args.probe else _PROBE_RE
        if not form.match(args.probe) or args.probe.startswith(".") or args.probe.endswith("."):
            raise UsageError(f"--probe {args.probe!r} is not a callable name", f"use {PROBE_FORMS}")
    probe_args = None
    if args.args is not None:
        if args.probe is None:
            raise UsageError("--args needs --probe", "add --probe CALLABLE")
        try:
            probe_args = json.loads(args.args)
        except ValueError as exc:
            raise UsageError(f"--args is not valid JSON ({exc})",
                             """pass a JSON list, e.g. --args '["hi", 2]'""") from None
        if not isinstance(probe_args, (list, dict)):
            raise UsageError("--args must be a JSON list or object", """e.g. --args '["hi"]' or --args '{"n": 2}'""")
    return CheckRequest(target=target, kind=kind, probe=args.probe, args=probe_args, timeout=args.timeout,
                        probe_timeout=args.probe_timeout, stall=args.stall, capture=args.capture,
                        log_dir=str(args.log_dir.resolve()), scenario=_scenario_name(target),
                        command=getattr(args, "argv", None), runner=getattr(args, "runner", None))


def _check_target_file(target: str) -> None:
    """Raise UsageError unless ``target`` is an existing regular file, saying what it is instead."""
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"file {target} does not exist", "check the path, or give a module name") from None
    except NotADirectoryError:
        raise UsageError(f"file {target} does not exist ({file_above(path)} is a file, not a folder)",
                         "check the path, or give a module name") from None
    except OSError as exc:
        raise UsageError(f"cannot read {target} ({exc.strerror or exc})", "check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{target} is a folder, not a .py file",
                         "give a .py file, or the package as a module name (pkg or pkg.tasks)")
    if not stat.S_ISREG(mode):
        what = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise UsageError(f"{target} is {what}, not a .py file", "give a .py file or a module name")


def write_record(path: Path, data: dict, replaced: bool) -> str:
    """Write the JSON record; return the line that says so (and whether a file was replaced).
    Raises UsageError when it cannot be written after all (the folder went away...)."""
    try:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:
        raise UsageError(f"could not write the record to {path} ({exc.strerror or exc})",
                         "pass --json a path in a folder you can write to") from None
    return f"record written to {path}" + (" (replaced the previous file)" if replaced else "")


def _scenario_name(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(target).stem if target.endswith(".py") else target)[:60]


def runner_advice(req: CheckRequest, report: Report, runner: str | None = None) -> list[str]:
    """The fix for the runner that forks the target: ``runner`` (--runner) when given,
    else the one it can tell (a Celery app, or the job-queue libraries the target
    imported, ``Report.frameworks``). When it cannot tell, one line saying how to
    ask for it (--runner NAME)."""
    from .guard import RUNNER_FIXES

    runner = runner or req.runner
    if runner:
        chosen, why = [runner], "--runner"
    elif req.kind == "app":
        chosen, why = ["celery"], "a Celery app"
    else:
        chosen, why = [name for name in report.frameworks if name in RUNNER_FIXES], "imported by the target"
    lines: list[str] = []
    if not chosen:
        return ["", f"The fix for the program that forks it (Gunicorn --preload, uWSGI, a job queue, ...): "
                    f"check again with --runner NAME ({', '.join(RUNNER_FIXES)})"]
    for name in chosen:
        label = f"{name} ({why})"
        if name == "celery" and req.kind == "app":
            label = "this Celery app, with the prefork pool"  # the Celery app says which runner by itself
        lines += ["", f"For {label}, fix (one of):"]
        lines += [f"  - {fix}" for fix in RUNNER_FIXES[name]]
    return lines


def check_lines(run: CheckRun) -> list[str]:
    """What ``check`` prints for a run that imported fine: report, probe, timings."""
    req = run.request
    report = Report.from_dict(run.report)
    label = {"module": "module", "file": "file", "app": "Celery app"}[req.kind]
    lines = [f"forksafety check: {label} {req.target}",
             f"imported in {run.import_seconds:.2f} s in a fresh interpreter (pid {report.pid}); "
             f"inspected in {report.seconds * 1000:.0f} ms", ""]
    lines += format_report(report)
    if report.verdict.value != "SAFE":
        lines += runner_advice(req, report)
    if run.probe:
        p = run.probe
        shown_args = json.dumps(req.args) if req.args is not None else ""
        outcome = outcome_text(p["outcome"], p.get("signal"), p.get("rule"))
        lines += ["", f"Probe: {req.probe}({shown_args}) in a forked child: {outcome} after {p['seconds']:.2f} s",
                  f"  {p.get('detail', '')}".rstrip()]
        ev = p.get("evidence") or {}
        if ev.get("lost_threads"):
            lines.append(f"  threads lost in the fork: {', '.join(ev['lost_threads'])}")
        if ev.get("top_python_frame"):
            lines.append(f"  child stuck at: {ev['top_python_frame']}")
        if ev.get("log"):
            lines.append(f"  evidence: {ev['log']}")
        if ev.get("traceback"):
            lines += ["  " + line for line in ev["traceback"].rstrip().splitlines()[-6:]]
        if p.get("leftovers"):
            n = len(p["leftovers"])
            lines.append(f"  note: the probe left {n} process{'es' if n != 1 else ''} running "
                         f"(pid {', '.join(map(str, p['leftovers']))}): stopped")
    return lines


def check_main(args) -> int:
    """``check``: validate every path, run it, print the report, write --json, return the exit code."""
    request = build_request(args)
    replaced = check_output_file(args.json) if args.json else False
    check_log_dir(args.log_dir, create=args.probe is not None)
    run = run_check(request)
    prog = f"{PROG} check"
    if run.status == "ok":  # the report first: should the record fail to be written, it is not lost
        print("\n".join(check_lines(run)), flush=True)
    written = write_record(args.json, run.to_dict(), replaced) if args.json else None
    if run.status == "ok":
        print(f"\nexit {run.exit_code}" + (f"; {written}" if written else ""))
        return run.exit_code
    if written:
        print(written)
    if run.status == "import-error":
        fail(f"importing {request.target!r} failed: {run.error}", prog=prog)
        sys.stderr.write((run.error_detail or "").rstrip() + "\n")
    elif run.status == "timeout":
        fail(f"{run.error}: it hangs at import (stack below); raise --timeout if it is only slow", prog=prog)
        sys.stderr.write((run.error_detail or "").rstrip() + "\n")
    elif run.status == "stopped":
        fail(f"{run.error}: a stopped process never resumes by itself; remove what stops it (stack below)",
             prog=prog)
        sys.stderr.write((run.error_detail or "").rstrip() + "\n")
    elif run.status == "not-found":
        fail(f"{run.error}: check the name, and run from the folder that contains it "
             "(or set PYTHONPATH)", prog=prog)
    elif run.status == "probe-not-found":
        fail(f"--probe: {run.error}", prog=prog)
    elif run.status == "import-crashed":
        fail(run.error, prog=prog)
        ours = (module_file("forksafety.checkrun"), "<frozen ", "importlib/__init__.py")
        lines = [ln for ln in run.output.rstrip().splitlines() if ln.strip() and not any(o in ln for o in ours)]
        if lines:  # what the interpreter said as it died (faulthandler: the target's frames)
            sys.stderr.write("\n".join(lines[-15:]) + "\n")
    else:
        fail(run.error or run.status, prog=prog)
        tail = run.output.rstrip().splitlines()[-15:]
        if tail:
            sys.stderr.write("\n".join(tail) + "\n")
    return EXIT_USAGE


# ------------------------------------------------------------------------------ lab
def lab_main(args) -> int:
    """``lab``: run the chosen cases, print the table and the agreement figure."""
    from .cases import CASES
    from .lab import LabOptions, agreement, lab_details, lab_record, lab_table, run_lab, select_cases

    if args.list:
        width = max(len(c.name) for c in CASES)
        for c in CASES:
            kind = "control" if c.control else "case"
            print(f"{c.name:<{width}}  {kind:<7}  expected {c.expected_text():<8} verdict {c.verdict:<6}  {c.summary}")
        return EXIT_OK
    if args.case and args.all:
        raise UsageError("--case and --all exclude each other", "choose one")
    cases = select_cases(args.case, args.all)
    replaced = check_output_file(args.json) if args.json else False
    check_log_dir(args.log_dir)
    options = LabOptions(timeout=args.timeout, probe_timeout=args.probe_timeout, stall=args.stall,
                         capture=args.capture, repeat=args.repeat, parallel=args.parallel,
                         log_dir=args.log_dir.resolve(), command=getattr(args, "argv", None))
    print(f"forksafety lab: {len(cases)} case(s) x {args.repeat} run(s), {min(args.parallel, len(cases))} at a time; "
          f"child bound {args.probe_timeout:g} s, stall window {args.stall:g} s", flush=True)
    started = time.monotonic()
    lock = threading.Lock()

    def progress(name: str, status: str) -> None:
        with lock:
            print(f"{time.monotonic() - started:6.1f}s  {name:<24} {status}", flush=True)

    results = run_lab(cases, options, progress)
    wall = time.monotonic() - started
    right, total = agreement(results)
    print()
    print("\n".join(lab_table(results)))
    print()
    print("\n".join(lab_details(results)))
    print()
    check_right = sum(r.check_right for r in results)
    outcome_right = sum(r.outcome_right for r in results)
    print(f"agreement: {right}/{total} cases right (observed outcome as measured, and check's verdict as expected); "
          f"check right {check_right}/{total}, outcomes as measured {outcome_right}/{total}; {wall:.1f} s")
    if args.json:
        print(write_record(args.json, lab_record(results, options, wall), replaced))
    return EXIT_OK if right == total else EXIT_MISMATCH
