"""Running the check on a target in a fresh interpreter (``forksafety.checkrun``),
bounded by timeouts, with every process it starts stopped on every path.

Part of the checker (``forksafety.check``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ForkSafetyError
from ..outcome import Outcome
from .inspection import Safety
from .tracking import module_file

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


TARGET_KINDS = ("module", "file", "app")
PROBE_CAPTURE = ("full", "light", "none")


@dataclass
class CheckRequest:
    """What ``run_check`` asks the runner interpreter to do.

    kind: "module" (``pkg.tasks``), "file" (``path/to/tasks.py``) or "app" (a
    Celery app spec as for ``celery -A``). probe: a callable to call in a forked
    child (``name`` in the target, or ``module:attr``), with ``args`` (a JSON list
    or object). timeout: seconds the import may take. probe_timeout: seconds the
    probe child may take. stall: seconds of the ``stalled`` hang rule.
    capture: evidence for a hung probe child: "full" (py-spy and pystack),
    "light" (procinfo only), "none". command: the user's command line, shown
    in the header of evidence files (default: the runner's).
    """

    target: str
    kind: str = "module"
    probe: str | None = None
    args: list | dict | None = None
    timeout: float = 30.0
    probe_timeout: float = 15.0
    stall: float = 2.0
    capture: str = "full"
    log_dir: str = "crash_dumps"  # relative to cwd: never site-packages
    scenario: str = ""
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None
    command: list[str] | None = None  # the user's command line, for the header of evidence files
    runner: str | None = None  # --runner: the runner that will fork the target (its fix is shown)


@dataclass
class CheckRun:
    """The result of ``run_check``.

    status: "ok"; "not-found" (no such module/file/app); "import-error" (the
    target raised while importing); "import-crashed" (importing the target
    killed the process with a signal or ended it, e.g. os._exit); "stopped"
    (the target stopped the process: state T, SIGSTOP); "timeout" (the import
    did not finish in time); "probe-not-found"; "runner-failed" (the runner
    itself died); "cancelled".
    error: one-line summary; error_detail: the import's own traceback, or the
    stack where a timed-out import hangs.
    report: ``Report.to_dict()``; probe: the probe record (outcome PASS, HANG,
    CRASH, ERROR, signal, rule, detail, evidence, leftovers: pids of processes
    the probe left running, which were stopped).
    import_seconds: time the target's import took in the runner; seconds: wall time.
    """

    request: CheckRequest
    status: str
    report: dict | None = None
    probe: dict | None = None
    error: str | None = None
    error_detail: str | None = None
    import_seconds: float | None = None
    seconds: float = 0.0
    output: str = ""

    @property
    def verdict(self) -> Safety | None:
        """The check's verdict, or None when the target could not be inspected."""
        return Safety(self.report["verdict"]) if self.report else None

    @property
    def exit_code(self) -> int:
        """0 SAFE (and a probe, if any, PASS); 1 RISK/UNSAFE or a probe that did not
        finish PASS; 2 the target could not be imported or inspected."""
        if self.status != "ok" or self.report is None:
            return 2
        if self.verdict is not Safety.SAFE:
            return 1
        if self.probe is not None and self.probe.get("outcome") != Outcome.PASS.value:
            return 1
        return 0

    def to_dict(self) -> dict:
        """JSON-ready record (request included)."""
        data = asdict(self)
        data["verdict"] = self.verdict.value if self.verdict else None
        data["exit_code"] = self.exit_code
        return data


def _installed() -> bool:
    """True when this package lives in a site-packages folder (pip install), where
    adding that folder to PYTHONPATH would put it before the standard library."""
    import site

    return any(PACKAGE_ROOT == Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()])


def runner_environment(extra: dict[str, str | None] | None = None, run_id: str | None = None) -> dict[str, str]:
    """Environment for the runner interpreter: ours, ``extra`` (None values: unset), this package on
    PYTHONPATH (so ``-m forksafety.checkrun`` works from any folder) and the run id."""
    from ..watch import RUN_ID_ENV

    env = dict(os.environ)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if not _installed():  # a checkout: make it importable; an installed package already is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(PACKAGE_ROOT)) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if run_id:
        env[RUN_ID_ENV] = run_id
    return env


def run_check(request: CheckRequest, cancel: threading.Event | None = None) -> CheckRun:
    """Import ``request.target`` in a fresh interpreter, inspect it, optionally
    probe a fork, and return a CheckRun. Every wait is bounded: the import by
    ``request.timeout`` seconds (a hung import is reported with its stack), the
    probe by ``request.probe_timeout`` plus capture time. The runner's whole
    process tree (its process group, and every process tagged with this run's
    FORKSAFETY_RUN_ID) is killed on every path, including KeyboardInterrupt,
    and as soon as ``cancel`` (from another thread) is set: status "cancelled".
    Should this process die without a chance to clean up (SIGKILL), the runner
    dies with it (PR_SET_PDEATHSIG) and its watchdog stops every tagged process
    (see forksafety.checkrun.start_watchdog).
    Raises ForkSafetyError only for a request that cannot be started (bad kind).
    """
    from ..watch import pdeathsig_preexec

    if request.kind not in TARGET_KINDS:
        raise ForkSafetyError(f"unknown target kind {request.kind!r}", f"use one of {', '.join(TARGET_KINDS)}")
    started = time.monotonic()
    run_id = f"check-{os.urandom(5).hex()}"
    from ..watch import make_temp_dir, remove_stale_temp_folders

    remove_stale_temp_folders()
    work = make_temp_dir("check")
    req_path, result_path, out_path = work / "request.json", work / "result.json", work / "output.log"
    marker = work / "imported"
    import_deadline = started + request.timeout
    # after the import: the probe's own bound, evidence capture (py-spy/pystack) and margin
    tail = (request.probe_timeout + 60.0 if request.probe else 0.0) + 30.0
    payload = asdict(request)
    payload.update(result=str(result_path), marker=str(marker), run_id=run_id, caller_pid=os.getpid(),
                   lifetime=request.timeout + tail + 10.0)
    req_path.write_text(json.dumps(payload))
    proc = None
    status, error, detail = "runner-failed", None, None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forksafety.checkrun", str(req_path)],
                cwd=request.cwd or os.getcwd(), env=runner_environment(request.env, run_id),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pdeathsig_preexec(),
            )
        done_deadline = None
        stopped_since = None
        next_state_look = started
        while proc.poll() is None:
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                status, error = "cancelled", "cancelled"
                break
            if done_deadline is None and marker.exists():
                done_deadline = now + tail
            if now >= next_state_look:  # a process stopped by SIGSTOP never resumes by itself: say so early
                next_state_look = now + 0.25
                stopped_since = (stopped_since or now) if _state_letter(proc.pid) == "T" else None
                if stopped_since is not None and now - stopped_since >= 1.0:
                    status = "stopped"
                    error = (f"importing {request.target!r} stopped the process (state T: SIGSTOP or SIGTSTP)"
                             if not marker.exists() else
                             f"after importing {request.target!r}, the process was stopped (state T: SIGSTOP "
                             "or SIGTSTP, from a thread of the target?)")
                    detail = _stack_of_hung_import(proc.pid, stopped=True)
                    break
            if done_deadline is None and now >= import_deadline:
                status = "timeout"
                error = f"importing {request.target!r} did not finish within {request.timeout:g} s"
                detail = _stack_of_hung_import(proc.pid)
                break
            if done_deadline is not None and now >= done_deadline:
                status, error = "runner-failed", f"the check of {request.target!r} did not finish within " \
                                                 f"{tail:g} s after the import"
                break
            time.sleep(0.02)
        else:
            status = "finished"
    finally:
        if proc is not None:
            _kill_runner(proc, run_id)
    output = out_path.read_text(errors="replace") if out_path.exists() else ""
    run = CheckRun(request=request, status=status, error=error, error_detail=detail, output=output[-20000:])
    if status == "finished":
        run.status, run.error = _no_result(request.target, proc.returncode, marker.exists(), output)
        if result_path.exists():
            try:
                data = json.loads(result_path.read_text())
            except ValueError:
                data = None
            if data:
                run.status = data["status"]
                run.report, run.probe = data.get("report"), data.get("probe")
                run.error, run.error_detail = data.get("error"), data.get("error_detail")
                run.import_seconds = data.get("import_seconds")
    run.seconds = round(time.monotonic() - started, 3)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return run


def _no_result(target: str, returncode: int, imported: bool, output: str) -> tuple[str, str]:
    """(status, one-line error) for a runner that ended without writing its result:
    name the target and what ended the process (a signal, or an exit code)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = f"killed the process with {name}"
    else:
        cause = f"exited the process with code {returncode}"
    if not imported:
        if returncode >= 0 and "Traceback (most recent call last)" in output and module_file("forksafety.checkrun") in output:
            return "runner-failed", f"the check runner failed (exit code {returncode}) while importing {target!r}"
        hint = " (os._exit() at import?)" if returncode >= 0 else ""
        return "import-crashed", f"importing {target!r} {cause}{hint}"
    hint = " (os._exit() in a thread of the target?)" if returncode >= 0 else " (in a thread of the target?)"
    return "runner-failed", f"after importing {target!r}, something {cause} before the check finished{hint}"


def _state_letter(pid: int) -> str | None:
    """The process state letter of ``pid`` (R, S, D, T, t, Z...), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _stack_of_hung_import(pid: int, stopped: bool = False) -> str:
    """py-spy's dump of the runner whose import hangs (bounded), or one line saying why not.
    ``stopped``: the process is in state T; py-spy then reads it without suspending it
    (``--nonblocking``), since suspending a stopped process fails."""
    try:
        from ..capture import run_tool, tool_path

        command = [tool_path("py-spy"), "dump", "--pid", str(pid)] + (["--nonblocking"] if stopped else [])
        spy = run_tool(command)
        if spy.ok():
            return spy.output.strip()
        return f"(no stack: {tool_failure_line(spy.output)})"
    except Exception as exc:  # noqa: BLE001 - evidence is best effort
        return f"(no stack: {exc})"


def tool_failure_line(output: str) -> str:
    """One line for a failed tool run (py-spy & co): its ``Error:`` line and the
    innermost ``Caused by`` reason, never its own Rust backtrace."""
    lines = [ln.strip() for ln in output.splitlines()]
    if "Stack backtrace:" in lines:
        lines = lines[:lines.index("Stack backtrace:")]
    error = next((ln for ln in lines if ln.startswith("Error:")), None)
    causes = [ln.split(":", 1)[1].strip() for ln in lines if re.match(r"^\d+: ", ln)]
    if error:
        return error + (f" ({causes[-1]})" if causes else "")
    rest = [ln for ln in lines if ln and not ln.startswith(("Process ", "Python v"))]
    return (rest[-1] if rest else "the tool printed nothing")[:300]


def _kill_runner(proc: subprocess.Popen, run_id: str) -> None:
    """Kill the runner and its process group at once (SIGKILL), reap it, then stop
    anything still tagged with ``run_id`` (see forksafety.watch)."""
    from ..watch import stop_group, sweep_run

    stop_group(proc, sig=signal.SIGKILL)
    sweep_run(run_id, grace=0.5)
