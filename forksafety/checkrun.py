"""The runner of ``forksafety check``: runs in a fresh interpreter, started by
``forksafety.check.run_check`` as ``python -m forksafety.checkrun REQUEST.json``.

It starts the Tracker, imports the target (module, file or Celery app), inspects
the process (``forksafety.check.inspect_process``), optionally *probes* a fork:
forks, calls the callable in the child and watches it with a bounded wait
(``forksafety.watch.StallDetector``: deadlock-proven, stalled, deadline), and
writes one JSON result file. It then leaves with ``os._exit`` so neither the
target's non-daemon threads nor its atexit handlers can keep it alive; the
caller kills the whole process group anyway.

WARNING: this module imports user code on purpose; it is the only one that does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import check

CHILD_MESSAGE_LIMIT = 8000  # bytes the probe child may send back (well under a pipe's 64 KiB buffer)


class TargetNotFound(Exception):
    """The module, file or Celery app named by the user does not exist."""


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
        except (ImportError, AttributeError) as exc:
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
            except (ImportError, AttributeError):
                pass
    if not candidates:
        raise LookupError(f"{spec!r} is not defined in {getattr(module, '__name__', '?')} "
                          "(use NAME in the target, or module:callable)")
    func = candidates[0]
    if not callable(func):
        raise LookupError(f"{spec!r} is a {type(func).__name__}, not a callable")
    return func


@dataclass
class ProbeResult:
    """What happened when a forked child called the probe.

    outcome: OK (returned), HANG (a hang rule fired or the deadline passed),
    CRASH (killed by ``signal``), ERROR (raised, or exited non-zero).
    rule: for HANG, deadlock-proven / stalled / deadline. seconds: fork to verdict.
    evidence: lost threads, the child's state and syscall, capture file (HANG).
    """

    callable: str
    outcome: str
    seconds: float
    signal: str | None = None
    rule: str | None = None
    detail: str = ""
    child_pid: int | None = None
    evidence: dict = field(default_factory=dict)


def probe_fork(func, args: list | dict | None, timeout: float, stall: float, capture: str,
               log_dir: Path, scenario: str, name: str = "") -> ProbeResult:
    """Fork; in the child call ``func(*args)`` (or ``func(**args)``); watch the child.

    The child dies with us (PR_SET_PDEATHSIG) and reports through a pipe; the
    parent polls it every 20 ms with ``StallDetector(stall)`` until it exits,
    a hang rule fires, or ``timeout`` seconds pass. A hung child is captured
    (``capture``: "full" adds py-spy and pystack, each bounded by
    capture.TOOL_TIMEOUT) into ``log_dir`` and then killed. Uses the real
    os.fork even when forksafety.guard's strict mode is installed.
    """
    from . import procinfo
    from .guard import real_fork
    from .watch import RULE_DEADLINE, StallDetector, set_parent_death_signal

    parent_names = procinfo.thread_names(os.getpid())
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = real_fork()
    if pid == 0:  # the child: call, report, leave without running the parent's atexit handlers
        code = 0
        try:
            os.close(read_end)
            set_parent_death_signal()
            value = func(**args) if isinstance(args, dict) else func(*(args or []))
            message = {"status": "ok", "returned": repr(value)[:300]}
        except BaseException as exc:  # noqa: BLE001 - report anything, even SystemExit
            code = 1
            message = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000],
                       "traceback": traceback.format_exc()[-4000:]}
        try:
            os.write(write_end, json.dumps(message).encode()[:CHILD_MESSAGE_LIMIT])
        finally:
            os._exit(code)
    os.close(write_end)
    detector = StallDetector(stall)
    deadline = started + timeout
    status = None
    hang = None
    snap = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        try:
            snap = procinfo.snapshot(pid)
        except Exception:  # noqa: BLE001 - gone between waitpid and snapshot: next waitpid says how
            snap = None
        verdict = detector.feed(snap) if snap is not None else None
        if verdict is not None:
            hang = (verdict.rule, verdict.snapshot)
            break
        if time.monotonic() >= deadline:
            hang = (RULE_DEADLINE, snap)
            break
        time.sleep(0.02)
    result = ProbeResult(callable=name, outcome="ERROR", seconds=0.0, child_pid=pid)
    if hang is not None:
        rule, hang_snap = hang
        result.seconds = round(time.monotonic() - started, 3)  # fork to verdict, before the capture
        result.outcome, result.rule = "HANG", rule
        result.evidence = _evidence(pid, hang_snap, parent_names, capture, log_dir, scenario)
        result.detail = f"{rule}: {result.evidence.get('summary', '')}".strip()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(read_end)
        return result
    result.seconds = round(time.monotonic() - started, 3)
    message = _read_all(read_end)
    os.close(read_end)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            result.signal = signal.Signals(sig).name
        except ValueError:
            result.signal = f"signal {sig}"
        result.outcome, result.detail = "CRASH", f"the child was killed by {result.signal}"
        return result
    code = os.WEXITSTATUS(status)
    if code == 0 and message.get("status") == "ok":
        result.outcome, result.detail = "OK", f"returned {message.get('returned')}"
    else:
        result.detail = message.get("error") or f"the child exited with code {code}"
        if message.get("traceback"):
            result.evidence = {"traceback": message["traceback"]}
    return result


def _read_all(fd: int) -> dict:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        return {}


def _evidence(pid: int, snap, parent_names: list[str], capture: str, log_dir: Path, scenario: str) -> dict:
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
    try:
        path = cap.write_dump(cap.dump_path(log_dir, "check", scenario or "probe"),
                              f"check --probe: hung forked child ({scenario or 'probe'})", sections)
        evidence["log"] = str(path)
    except OSError as exc:
        evidence["log_error"] = str(exc)
    return evidence


def _import_error_text(exc: BaseException) -> tuple[str, str]:
    """(one-line summary, the import's own traceback without our frames)."""
    tb = traceback.TracebackException.from_exception(exc)
    frames = [f for f in tb.stack if not f.filename.startswith("<frozen importlib")
              and not f.filename.endswith(("forksafety/checkrun.py", "celery/app/utils.py", "celery/utils/imports.py",
                                           "kombu/utils/imports.py", "importlib/__init__.py"))]
    tb.stack = traceback.StackSummary.from_list(frames)
    summary = "".join(tb.format_exception_only()).strip().splitlines()[-1]
    return summary, "".join(tb.format())


def main(argv: list[str] | None = None) -> int:
    """Run one request (see module docstring). Always writes the result file."""
    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    result_path, marker = Path(request["result"]), Path(request["marker"])
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
                           name=request["probe"])
        result["probe"] = asdict(probe)
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
