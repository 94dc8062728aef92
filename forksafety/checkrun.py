"""The runner of ``forksafety check``: runs in a fresh interpreter, started by
``forksafety.check.run_check`` as ``python -m forksafety.checkrun REQUEST.json``.

It starts the Tracker, imports the target (module, file or Celery app), inspects
the process (``forksafety.check.inspect_process``), optionally *probes* a fork:
forks, calls the callable in the child and watches it with a bounded wait
(``forksafety.watch.StallDetector``: deadlock-proven, stalled, deadline), and
writes one JSON result file. It then leaves with ``os._exit`` so neither the
target's non-daemon threads nor its atexit handlers can keep it alive; the
caller kills the whole process group anyway.

Nothing it starts outlives the check: the runner dies with its caller
(PR_SET_PDEATHSIG, set again here), adopts every orphaned descendant
(PR_SET_CHILD_SUBREAPER), runs the probe child in a process group of its own
(stopped, with whatever it left running, when the probe ends), and before the
target is imported forks a small watchdog that, once the caller or the runner
is gone, stops every process tagged with this run's FORKSAFETY_RUN_ID (those
are the ones a SIGKILL of the caller would otherwise leave behind: PR_SET_PDEATHSIG
is not inherited across fork()).

WARNING: this module imports user code on purpose; it is the only one that does.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import check
from .errors import TargetNotFound
from .outcome import Outcome, Record

CHILD_MESSAGE_LIMIT = 8000  # bytes the probe child may send back (forksafety.forkchild.MESSAGE_LIMIT)
WATCHDOG_INTERVAL = 0.25  # seconds between the watchdog's looks at the caller and the runner


def _module_missing(exc: ModuleNotFoundError, name: str) -> bool:
    """True when ``exc`` says ``name`` itself (or a parent package of it) is missing,
    rather than something the target imports."""
    missing = exc.name or ""
    return bool(missing) and (name == missing or name.startswith(missing + "."))


def import_target(kind: str, target: str):
    """Import the target; return ``(module, app or None)``.

    kind "module": ``importlib.import_module(target)`` (the current folder is on
    sys.path, as with ``python -m``). kind "file": the file is imported as a
    module named after it, its folder first on sys.path. kind "app": Celery's own
    ``find_app`` (``proj``, ``proj.celery``, ``proj:app``), then the app's
    ``imports``/``include`` modules, as a worker does before it forks.
    Raises TargetNotFound, or whatever the target's own code raises.
    """
    if kind == "file":
        path = Path(target).resolve()
        if not path.is_file():
            raise TargetNotFound(f"file {target} does not exist")
        sys.path.insert(0, str(path.parent))
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TargetNotFound(f"{target} is not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module, None
    if kind == "app":
        module_name = target.split(":", 1)[0]
        try:
            from celery.app.utils import find_app
        except ImportError:
            raise TargetNotFound("-A needs Celery installed in this environment") from None
        try:
            app = find_app(target)
        except ModuleNotFoundError as exc:
            if _module_missing(exc, module_name):
                raise TargetNotFound(f"no module named {exc.name!r} (Celery app {target!r})") from None
            raise
        except AttributeError as exc:
            raise TargetNotFound(f"no Celery app found in {target!r} ({exc})") from None
        app.loader.import_default_modules()
        return sys.modules.get(module_name) or importlib.import_module(module_name), app
    try:
        return importlib.import_module(target), None
    except ModuleNotFoundError as exc:
        if _module_missing(exc, target):
            raise TargetNotFound(f"no module named {exc.name!r}") from None
        raise


def resolve_callable(spec: str, module, app=None):
    """The probe callable: ``name`` or ``a.b`` inside the target module, a task
    name of the Celery app, or ``pkg.mod:attr`` / ``pkg.mod.attr`` anywhere.
    Raises LookupError with a readable message when it is not found or not callable."""
    def walk(obj, dotted: str):
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    candidates = []
    if ":" in spec:
        mod_name, attr = spec.split(":", 1)
        try:
            candidates.append(walk(importlib.import_module(mod_name), attr))
        except (ImportError, AttributeError, ValueError) as exc:
            raise LookupError(f"cannot find {spec!r}: {exc}") from None
    else:
        try:
            candidates.append(walk(module, spec))
        except AttributeError:
            pass
        if not candidates and app is not None and spec in app.tasks:
            candidates.append(app.tasks[spec])
        if not candidates and "." in spec:
            mod_name, _, attr = spec.rpartition(".")
            try:
                candidates.append(getattr(importlib.import_module(mod_name), attr))
            except (ImportError, AttributeError, ValueError):
                pass
    if not candidates:
        raise LookupError(f"{spec!r} is not defined in {getattr(module, '__name__', '?')} "
                          "(use NAME in the target, or module:callable)")
    func = candidates[0]
    if not callable(func):
        raise LookupError(f"{spec!r} is not callable (it is {_article(type(func).__name__)})")
    return func


def _article(word: str) -> str:
    """``an int``, ``a str``, ``an object``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


@dataclass
class ProbeResult(Record):
    """What happened when a forked child called the probe.

    outcome: PASS (returned), HANG (a hang rule fired or the deadline passed),
    CRASH (killed by ``signal``), ERROR (raised, or exited non-zero).
    rule: for HANG, deadlock-proven / stalled / deadline. seconds: fork to verdict.
    evidence: lost threads, the child's state and syscall, capture file (HANG).
    leftovers: pids of processes the probe started and left running (in its
    process group), stopped by us when the probe ended.
    """

    callable: str
    outcome: Outcome
    seconds: float
    signal: str | None = None
    rule: str | None = None
    detail: str = ""
    child_pid: int | None = None
    evidence: dict = field(default_factory=dict)
    leftovers: list[int] = field(default_factory=list)


def probe_fork(func, args: list | dict | None, timeout: float, stall: float, capture: str,
               log_dir: Path, scenario: str, name: str = "", command: list[str] | None = None) -> ProbeResult:
    """Fork; in the child call ``func(*args)`` (or ``func(**args)``); watch the child.

    The child (``forksafety.forkchild.ForkedCall``) leads a process group of its
    own, dies with us (PR_SET_PDEATHSIG) and reports through a pipe with one
    newline-terminated JSON message. The parent watches it with the one watch loop
    (``forksafety.watch.watch_process``: every 20 ms, ``StallDetector(stall)``)
    until it exits, a hang rule fires, or ``timeout`` seconds pass. A hung child is
    captured (``capture``: "full" adds py-spy and pystack, each bounded by
    capture.TOOL_TIMEOUT) into ``log_dir`` and then killed. Whatever the outcome,
    every process left in the child's process group is then stopped and listed in
    ``leftovers``. Uses the real os.fork even when forksafety.guard's strict mode
    is installed.
    """
    from . import procinfo
    from .forkchild import ForkedCall
    from .guard import real_fork
    from .watch import group_members, stop_processes, watch_process

    def call() -> dict:
        value = func(**args) if isinstance(args, dict) else func(*(args or []))
        return {"status": "ok", "returned": repr(value)[:300]}

    parent_names = procinfo.thread_names(os.getpid())
    child = ForkedCall(call, new_group=True, error_code=1, message_limit=CHILD_MESSAGE_LIMIT, fork=real_fork)
    started = time.monotonic()
    pid = child.start()

    def observe() -> ProbeResult:
        seen = watch_process(child.poll, pid, started + timeout, stall=stall, pause=child.wait_readable)
        result = ProbeResult(callable=name, outcome=Outcome.ERROR, seconds=0.0, child_pid=pid)
        result.seconds = round(time.monotonic() - started, 3)  # fork to verdict, before the capture
        if seen.hung:
            rule, hang_snap = seen.rule, seen.snapshot
            result.outcome, result.rule = Outcome.HANG, rule
            result.evidence = _evidence(pid, hang_snap, parent_names, capture, log_dir, scenario, command)
            result.detail = f"{rule}: {result.evidence.get('summary', '')}".strip()
            if hang_snap is not None and hang_snap.state == "T":
                result.detail = (f"{rule}: the child is stopped (state T: SIGSTOP or SIGTSTP) and never resumes "
                                 "by itself")
            return result
        message = child.message
        if child.signal_name is not None:
            result.signal = child.signal_name
            result.outcome, result.detail = Outcome.CRASH, f"the child was killed by {result.signal}"
            return result
        if child.returncode == 0 and message.get("status") == "ok":
            result.outcome, result.detail = Outcome.PASS, f"returned {message.get('returned')}"
        else:
            result.detail = message.get("error") or f"the child exited with code {child.returncode}"
            if message.get("traceback"):
                result.evidence = {"traceback": message["traceback"]}
        return result

    try:
        result = observe()
    finally:
        # the group keeps the child's pid as its id while any member lives
        leftovers = group_members(pid, exclude=(pid,))
        child.kill()
        if leftovers:
            stop_processes(leftovers, grace=0.5, kill_wait=2.0, reap=True)
        child.close()
    result.leftovers = [p.pid for p in leftovers]
    return result


def start_watchdog(run_id: str, caller_pid: int | None, lifetime: float) -> int | None:
    """Fork the runner's watchdog; returns its pid (None when there is nothing to watch).

    The watchdog does nothing but look, every WATCHDOG_INTERVAL seconds, whether
    the caller (the check CLI, or the lab) and this runner still run. Once either
    is gone, or ``lifetime`` seconds have passed (the caller's own bound on the
    whole check), it stops every process tagged ``FORKSAFETY_RUN_ID=run_id``
    (processes the target or the probe forked, reparented to init after a SIGKILL
    of the caller) and exits. It stays in the runner's process group, so the
    caller's normal clean-up (killpg) ends it too. Forked before the target is
    imported: a fork of a process with no thread.
    """
    import psutil

    from .watch import process_gone, sweep_run

    if not run_id or not caller_pid:
        return None
    runner = os.getpid()
    try:
        caller = psutil.Process(caller_pid)
        caller.create_time()
    except psutil.Error:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    try:  # the watchdog
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        deadline = time.monotonic() + lifetime
        while (time.monotonic() < deadline and os.getppid() == runner and caller.is_running()
               and not process_gone(caller)):
            time.sleep(WATCHDOG_INTERVAL)
        sweep_run(run_id, exclude=(caller_pid,), grace=0.3)
    finally:
        os._exit(0)


def _set_child_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are reparented to this
    process instead of init, so they stay in its tree and are reaped (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _evidence(pid: int, snap, parent_names: list[str], capture: str, log_dir: Path, scenario: str,
              command: list[str] | None = None) -> dict:
    """Evidence from a hung probe child, captured as the demo scripts capture it
    (``forksafety.capture.child_evidence``): threads lost in the fork, state,
    decoded syscall and futex; with "full", py-spy and pystack stacks. Written to
    ``log_dir`` unless ``capture`` is "none"."""
    from . import capture as cap
    from . import procinfo

    if snap is None:  # the deadline passed before any look at the child
        return {"lost_threads": [], "summary": "no snapshot of the child"}
    if capture == "none":
        lost = procinfo.lost_threads(parent_names, [t.name for t in snap.threads])
        syscall = snap.syscall.describe() if snap.syscall else None
        summary = f"{len(snap.threads)} thread(s) in the child vs {len(parent_names)} in the parent"
        return {"lost_threads": lost, "syscall": syscall,
                "summary": summary + (f"; blocked in {syscall}" if syscall else "")}
    sections, evidence = cap.child_evidence(pid, snap, parent_names, os.getpid(), parent_label="parent (check runner)",
                                            child_label="probe child", stacks=capture == "full")
    sections = [_short_tool_failure(title, body) for title, body in sections]
    if snap.state == "T":
        sections.insert(0, ("stopped", ["The probe child is stopped (state T): it received SIGSTOP or SIGTSTP "
                                        "(sent by itself?) and never resumes by itself."]))
    try:
        path = cap.write_dump(cap.dump_path(log_dir, "check", scenario or "probe"),
                              f"check --probe: hung forked child ({scenario or 'probe'})", sections, command=command)
        evidence["log"] = str(path)
    except OSError as exc:
        evidence["log_error"] = str(exc)
    return evidence


def _short_tool_failure(title: str, body):
    """A py-spy / pystack section as is, unless the tool failed: then one line
    (its error and reason), never the tool's own Rust backtrace."""
    if isinstance(body, str) and "(exit 0)" not in title and ("Stack backtrace:" in body or "Error:" in body):
        return title, f"failed: {check.tool_failure_line(body)}"
    return title, body


def _import_error_text(exc: BaseException) -> tuple[str, str]:
    """(one-line summary, the import's own traceback without our frames)."""
    tb = traceback.TracebackException.from_exception(exc)
    frames = [f for f in tb.stack if not f.filename.startswith("<frozen importlib")
              and f.filename != __file__
              and not f.filename.endswith(("celery/app/utils.py", "celery/utils/imports.py",
                                           "kombu/utils/imports.py", "importlib/__init__.py"))]
    tb.stack = traceback.StackSummary.from_list(frames)
    summary = "".join(tb.format_exception_only()).strip().splitlines()[-1]
    return summary, "".join(tb.format())


def main(argv: list[str] | None = None) -> int:
    """Run one request (see module docstring). Always writes the result file."""
    from .watch import set_parent_death_signal

    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    result_path, marker = Path(request["result"]), Path(request["marker"])
    caller_pid = request.get("caller_pid")
    set_parent_death_signal()
    if caller_pid and os.getppid() != caller_pid:  # the caller died before the line above: nobody to report to
        return 1
    _set_child_subreaper()
    start_watchdog(request.get("run_id") or "", caller_pid, float(request.get("lifetime") or 300.0))
    try:
        return _run_request(request, result_path, marker)
    finally:
        stop_own_children()


CHILD_REAP_WAIT = 2.0  # seconds the runner waits to reap the children it SIGKILLed at its end


def stop_own_children() -> None:
    """SIGKILL every process still below the runner once it is done (its watchdog, and
    whatever the target started: orphans are reparented here, PR_SET_CHILD_SUBREAPER;
    watch.stop_processes), then reap every exited child (waitpid, bounded by
    CHILD_REAP_WAIT seconds), so no zombie of ours is left for init to reap: the
    caller's clean-up (watch.stop_group) then finds the runner's group empty at once
    instead of waiting for init (watch.ZOMBIE_REAP_WAIT)."""
    import psutil

    from .watch import stop_processes, wait_until

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    stop_processes(children, grace=0.0, sig=signal.SIGKILL, kill_wait=2.0, reap=True)

    def no_child_left() -> bool:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap every child that has exited
                pass
        except ChildProcessError:
            return True
        return False

    wait_until(no_child_left, CHILD_REAP_WAIT, interval=0.01)


def _run_request(request: dict, result_path: Path, marker: Path) -> int:
    """The check of one request, after the watchdog is started; writes the result file."""
    faulthandler.enable()  # a target that crashes the interpreter at import leaves its Python stack in the log
    tracker = check.start_tracking()
    result: dict = {"status": "ok"}
    started = time.perf_counter()
    try:
        module, app = import_target(request["kind"], request["target"])
    except TargetNotFound as exc:
        _write(result_path, {"status": "not-found", "error": str(exc)})
        return 0
    except BaseException as exc:  # noqa: BLE001 - the target's own error, shown to the user
        summary, detail = _import_error_text(exc)
        _write(result_path, {"status": "import-error", "error": summary, "error_detail": detail,
                             "import_seconds": round(time.perf_counter() - started, 3)})
        return 0
    result["import_seconds"] = round(time.perf_counter() - started, 3)
    tracker.scan()  # threads made by the import's last C call: seen now, with no stack to blame
    tracker.stop()
    marker.write_text("1")
    report = check.inspect_process(tracker)
    result["report"] = report.to_dict()
    if request.get("probe"):
        try:
            func = resolve_callable(request["probe"], module, app)
        except LookupError as exc:
            result.update(status="probe-not-found", error=str(exc))
            _write(result_path, result)
            return 0
        probe = probe_fork(func, request.get("args"), request["probe_timeout"], request["stall"],
                           request["capture"], Path(request["log_dir"]), request.get("scenario", ""),
                           name=request["probe"], command=request.get("command"))
        result["probe"] = probe.to_dict()
    _write(result_path, result)
    return 0


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - a bug of ours: show it, the caller reports "runner-failed"
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
