"""One scenario model for every runner: start the real server or worker, send real
work, find the process doing it, watch it, classify, capture, stop everything.

A runner (``forksafety.runners.drivers``) says only what is particular to it: the
processes to start and when each is ready, how work is sent, and when it is done.
The rest is shared with the Celery runner: ``watch.watch_process`` and its hang
rules, the ``watch`` stop family, ``capture`` for HANG evidence, ``outcome`` for
the verdict.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .. import procinfo
from ..errors import ToolMissingError
from ..loopback import port_accepts
from ..outcome import Expected, Outcome, Record
from ..settings import REPO_ROOT
from ..watch import (OWNER_ENV, RUN_ID_ENV, SCENARIO_ENV, make_temp_dir, pdeathsig_preexec,
                     process_tree, stop_group, sweep_run, wait_until, watch_process)
from . import work

POLL_INTERVAL = 0.02  # seconds between two looks at the work and the worker
# Seconds a runner's processes get after their stop signal before SIGKILL: the verdict
# is recorded already, and a hung worker never reacts to a polite signal.
STOP_GRACE = 0.3
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
BIN_DIR = Path(sys.executable).parent  # the programs pip installed next to this Python


def find_program(name: str, bin_dir: Path | None = None) -> str:
    """The path of program ``name``: in ``bin_dir`` when given (only there), else
    next to this Python (the venv's bin/), else on PATH. Raises ToolMissingError."""
    if bin_dir is not None:
        found = shutil.which(name, path=str(bin_dir))
    else:
        found = shutil.which(name, path=str(BIN_DIR)) or shutil.which(name)
    if found is None:
        where = f"in {bin_dir}" if bin_dir is not None else f"in {BIN_DIR} or on PATH"
        raise ToolMissingError(f"runner program {name!r} is not installed ({where})",
                               "run `make install` (requirements.lock installs it), or pass --bin-dir DIR")
    return found


@dataclass(frozen=True)
class Scenario:
    """One runner and variant.

    kind: ``bug`` (the store at module level, as users write it), ``fix`` (the
      runner's documented fix) or ``default`` (the runner's default set-up).
    expected: what we expect, from the runner's own code and docs and measured here.
    summary: what the variant does, in a few words.
    """

    runner: str
    variant: str
    kind: str
    expected: Expected
    summary: str

    @property
    def name(self) -> str:
        """File-name-safe name, e.g. ``gunicorn_preload``."""
        return f"{self.runner}_{self.variant}"


@dataclass
class RunnerVerdict(Record):
    """The record of one runner scenario (see outcome.Record for the shared parts).

    seconds: wall time, first process started to every process stopped.
    verdict_seconds: from the work reaching the worker (its ``started`` record) to the verdict.
    worker_pid: the process that did (or hung in) the work.
    """

    runner: str
    variant: str
    kind: str
    outcome: Outcome
    expected: Expected
    seconds: float
    detail: str = ""
    signal: str | None = None
    rule: str | None = None
    worker_pid: int | None = None
    verdict_seconds: float | None = None
    logs: list[str] = field(default_factory=list)
    evidence: dict | None = None
    extra: dict = field(default_factory=dict)

    SECONDS_DIGITS = 2

    @property
    def matched(self) -> bool:
        """True when the outcome is the expected one. A HANG matches only once the work
        reached a worker (``worker_pid``): a hang before that (a broker that stopped
        answering, a request no server got) is not the fork bug reproduced."""
        return super().matched and not (self.outcome is Outcome.HANG and self.worker_pid is None)

    @property
    def scenario(self) -> str:
        """``runner/variant``."""
        return f"{self.runner}/{self.variant}"

    @property
    def worker_log(self) -> str:
        """The logs of the scenario's processes, comma-separated."""
        return ", ".join(self.logs)


@dataclass
class RunOptions:
    """Bounds and places for a run. Durations in seconds.

    timeout: deadline for the work, from sending it. stall: window of the ``stalled`` rule.
    startup_timeout: how long a server or worker may take to become ready.
    port: the port of the server runners (None: a free one per scenario).
    bin_dir: where runner programs are looked up (None: the venv, then PATH).
    """

    timeout: float = 20.0
    stall: float = 2.0
    startup_timeout: float = 60.0
    log_dir: Path = REPO_ROOT / "crash_dumps"
    capture: bool = True
    port: int | None = None
    bin_dir: Path | None = None
    redis_url: str | None = None
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")


@dataclass
class Proc:
    """A process a scenario starts: its name (log file), command line, extra
    environment, when it is ready (``ready``, or once its log holds ``ready_line``;
    neither: at once), the signal that stops it, and whether it may exit by itself
    (a producer that sends a job and ends)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    ready_line: str | None = None
    stop_signal: int = signal.SIGTERM
    may_exit: bool = False
    popen: subprocess.Popen | None = None
    log: Path | None = None


class Context:
    """What a driver gets: the scenario, options, a folder of its own (``tmp``), the
    work folder the example writes its records to, a free port, the Redis URL."""

    def __init__(self, scenario: Scenario, options: RunOptions, tmp: Path, port: int | None,
                 redis_url: str | None) -> None:
        self.scenario = scenario
        self.options = options
        self.tmp = tmp
        self.work_dir = tmp / "work"
        self.chroma_dir = tmp / "chroma"
        self.port = port
        self.redis_url = redis_url
        self.procs: list[Proc] = []
        self.state: dict = {}  # the driver's own notes (request thread, job id...)

    def program(self, name: str) -> str:
        """Path of a runner program (see find_program)."""
        return find_program(name, self.options.bin_dir)

    def proc(self, name: str) -> Proc:
        """The started process called ``name``."""
        return next(p for p in self.procs if p.name == name)

    def started(self) -> dict | None:
        """The example's ``started`` record: which pid runs the work, since when (wall time)."""
        return work.started(self.work_dir)

    def finished(self) -> dict | None:
        """The example's ``done`` record, with its result."""
        return work.finished(self.work_dir)


def judge_result(result: object, texts: list[str]) -> tuple[Outcome, str]:
    """PASS when ``result`` holds ``texts`` and one id per text, else ERROR (what came back)."""
    if isinstance(result, dict) and result.get("texts") == texts and len(result.get("ids") or []) == len(texts):
        where = f" in pid {result['pid']}" if result.get("pid") else ""
        return Outcome.PASS, f"added {len(texts)} documents{where}"
    return Outcome.ERROR, f"the work returned something other than the documents it was sent: {result!r}"[:300]


def log_cause(path: Path | None, lines: int = 3) -> str:
    """The last lines of a process log that name an error (else its last lines)."""
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    text = [ANSI_RE.sub("", line) for line in text]  # coloured logs (huey, dramatiq)
    errors = [line.strip() for line in text if "Error" in line or "Exception" in line]
    chosen = errors[-lines:] if errors else [line.strip() for line in text[-lines:]]
    return " | ".join(chosen)[:400] or "(empty log)"


class Driver:
    """What is particular to one runner (override in drivers.py).

    programs: runner programs that must be installed (checked before any work).
    needs_redis / needs_port: the scenario needs a Redis server / a loopback port.
    """

    programs: tuple[str, ...] = ()
    needs_redis: bool = False
    needs_port: bool = False

    def processes(self, ctx: Context) -> list[Proc]:
        """The processes to start, in order (each waited for before the next)."""
        raise NotImplementedError

    def send(self, ctx: Context) -> None:
        """Send the work (a request, a job). Must not block for long."""

    def poll(self, ctx: Context) -> tuple[Outcome, str] | None:
        """(outcome, detail) once the work ended, else None. Called every POLL_INTERVAL."""
        done = ctx.finished()
        if done is not None:
            return judge_result(done.get("result"), list(ctx.state.get("texts") or done["result"].get("texts", [])))
        return None

    def worker_pid(self, ctx: Context) -> int | None:
        """The process doing the work: the pid of the example's ``started`` record,
        once psutil shows it is one of ours (a descendant of a process we started)."""
        rec = ctx.started()
        if rec is None:
            return None
        return rec["pid"] if is_ours(ctx, rec["pid"]) else None

    def cleanup(self, ctx: Context) -> None:
        """Release what ``send`` opened (clients, threads). Bounded."""

    def note(self, ctx: Context) -> str:
        """What the user saw while it hung (e.g. the status endpoint's states), or ''."""
        return ""


def is_ours(ctx: Context, pid: int) -> bool:
    """True when ``pid`` is one of the processes started for ``ctx`` or a descendant (psutil)."""
    for proc in ctx.procs:
        if proc.popen is None:
            continue
        if proc.popen.pid == pid:
            return True
        try:
            if any(child.pid == pid for child in psutil.Process(proc.popen.pid).children(recursive=True)):
                return True
        except psutil.Error:
            continue
    return False


def serving(ctx: Context, name: str | None = None) -> bool:
    """True once a process started for ``ctx`` (``name``: only that one), or a descendant,
    listens on 127.0.0.1:``ctx.port`` and the port accepts a connection. Another program
    holding the port (taken after --port was checked) does not count: the server then
    fails to bind and exits, and its log says why (psutil ``net_connections``)."""
    for proc in ctx.procs:
        if proc.popen is None or (name is not None and proc.name != name):
            continue
        for member in process_tree(proc.popen.pid):
            try:
                conns = member.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == ctx.port for c in conns):
                return port_accepts(ctx.port)
    return False


class ScenarioRun:
    """One scenario start to finish. ``run()`` never raises for a scenario that goes
    wrong (that is an ERROR verdict) and always stops every process it started."""

    def __init__(self, scenario: Scenario, driver: Driver, options: RunOptions,
                 progress: Callable[[str, str], None] | None = None) -> None:
        self.scenario = scenario
        self.driver = driver
        self.options = options
        self.progress = progress or (lambda name, status: None)
        self.ctx: Context | None = None
        self._cancelled = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def scenario_id(self) -> str:
        """The FORKSAFETY_SCENARIO tag every process of this scenario carries."""
        return f"{self.options.run_id}/{self.scenario.name}"

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        """Environment of a started process: ours, the tags, the example's folders."""
        assert self.ctx is not None
        env = dict(os.environ)
        env.update({
            RUN_ID_ENV: self.options.run_id, SCENARIO_ENV: self.scenario_id, OWNER_ENV: str(os.getpid()),
            work.WORK_DIR_ENV: str(self.ctx.work_dir), "CHROMA_DIR": str(self.ctx.chroma_dir),
            "TMPDIR": str(self.ctx.tmp), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        })
        if self.ctx.redis_url:
            env["REDIS_URL"] = self.ctx.redis_url
        env.update(extra)
        return env

    def start(self, proc: Proc) -> str | None:
        """Start ``proc`` in its own session, log in crash_dumps/, and wait (bounded) until
        it is ready. Returns None when ready, else why not."""
        assert self.ctx is not None
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        proc.log = self.options.log_dir / f"runner_{self.scenario.name}_{proc.name}.log"
        with open(proc.log, "w") as log:
            log.write(f"# {' '.join(proc.argv)}\n")
            log.flush()
            proc.popen = subprocess.Popen(proc.argv, cwd=REPO_ROOT, env=self.environment(proc.env),
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=pdeathsig_preexec())
        self.ctx.procs.append(proc)
        if proc.ready is None and proc.ready_line is not None:
            proc.ready = lambda: proc.ready_line in proc.log.read_text(errors="replace")
        if proc.ready is None:
            return None
        wait_until(lambda: proc.popen.poll() is not None or self._cancelled.is_set() or proc.ready(),
                   self.options.startup_timeout, interval=0.05)
        if self._cancelled.is_set():
            return "cancelled"
        if proc.popen.poll() is not None:
            return f"{proc.name} exited with code {proc.popen.returncode} before it was ready: {log_cause(proc.log)}"
        if not proc.ready():
            return f"{proc.name} not ready after {self.options.startup_timeout:g} s: {log_cause(proc.log)}"
        return None

    def stop(self) -> None:
        """Stop every process of the scenario: each one's process group (its stop
        signal, STOP_GRACE seconds, SIGKILL), then whatever still carries the
        scenario's tag (a worker that left the group, a grandchild reparented to
        init). Thread-safe, idempotent, bounded."""
        with self._stop_lock:
            if self.ctx is None:
                return
            for proc in reversed(self.ctx.procs):
                if proc.popen is not None:
                    # zombies left by a stopped worker run nothing: init reaps them later
                    stop_group(proc.popen, grace=STOP_GRACE, sig=proc.stop_signal, zombie_wait=0)
            sweep_run(self.scenario_id, grace=STOP_GRACE, name=SCENARIO_ENV)

    def cancel(self) -> None:
        """Stop this scenario now (from any thread): its loops end, its processes are stopped."""
        self._cancelled.set()
        self.stop()

    def run(self, redis_url: str | None = None) -> RunnerVerdict:
        """Run the scenario and return its verdict (``redis_url``: the run's Redis)."""
        started = time.monotonic()
        verdict = None
        tmp = make_temp_dir("runners", self.scenario.name)
        port = self.options.port if self.options.port is not None else None
        if port is None and self.driver.needs_port:
            from ..loopback import free_port

            port = free_port()
        self.ctx = Context(self.scenario, self.options, tmp, port, redis_url)
        self.ctx.work_dir.mkdir()
        self.ctx.chroma_dir.mkdir()
        try:
            self.progress(self.scenario.name, "starting")
            for proc in self.driver.processes(self.ctx):
                problem = self.start(proc)
                if problem:
                    verdict = self._verdict(Outcome.ERROR, started, problem)
                    break
            else:
                self.progress(self.scenario.name, "work sent")
                ready_seconds = time.monotonic() - started
                self.driver.send(self.ctx)
                verdict = self._watch(started)
                verdict.extra["ready_seconds"] = round(ready_seconds, 3)
        except Exception as exc:  # noqa: BLE001 - a scenario that goes wrong is an ERROR verdict
            verdict = self._verdict(Outcome.ERROR, started, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.progress(self.scenario.name, "stopping")
            self.stop()
            try:
                self.driver.cleanup(self.ctx)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        verdict.seconds = time.monotonic() - started
        self.progress(self.scenario.name, "done")
        return verdict

    def _verdict(self, outcome: Outcome, started: float, detail: str, **kw) -> RunnerVerdict:
        logs = [str(p.log) for p in (self.ctx.procs if self.ctx else []) if p.log is not None]
        return RunnerVerdict(runner=self.scenario.runner, variant=self.scenario.variant, kind=self.scenario.kind,
                             outcome=outcome, expected=self.scenario.expected, seconds=time.monotonic() - started,
                             detail=detail, logs=logs, **kw)

    def _died(self) -> tuple[Outcome, str, str | None] | None:
        """A started process that exited on its own: CRASH (by a signal) or ERROR."""
        assert self.ctx is not None
        for proc in self.ctx.procs:
            code = proc.popen.poll() if proc.popen is not None else None
            if code is None or (proc.may_exit and code == 0):
                continue
            if code < 0:
                return Outcome.CRASH, f"{proc.name} died by {signal.Signals(-code).name}", signal.Signals(-code).name
            return Outcome.ERROR, f"{proc.name} exited with code {code}: {log_cause(proc.log)}", None
        return None

    def _watch(self, started: float) -> RunnerVerdict:
        ctx = self.ctx
        assert ctx is not None
        deadline = time.monotonic() + self.options.timeout
        seen: dict = {"pid": None, "at": None}

        def worker() -> int | None:
            if seen["pid"] is None:
                pid = self.driver.worker_pid(ctx)
                if pid is not None:
                    # when the work reached the worker: the example's own record (wall
                    # time) when it wrote one, else now (the first time we saw it)
                    rec = ctx.started()
                    lag = max(0.0, time.time() - rec["time"]) if rec and rec.get("pid") == pid else 0.0
                    seen["pid"], seen["at"] = pid, time.monotonic() - lag
                    self.progress(self.scenario.name, f"running in pid {pid}")
            return seen["pid"]

        def done() -> RunnerVerdict | None:
            ended = self.driver.poll(ctx)
            if ended is not None:
                return self._verdict(ended[0], started, ended[1], worker_pid=seen["pid"],
                                     verdict_seconds=self._since(seen["at"]))
            died = self._died()
            if died is not None:
                return self._verdict(died[0], started, died[1], signal=died[2], worker_pid=seen["pid"],
                                     verdict_seconds=self._since(seen["at"]))
            if self._cancelled.is_set():
                return self._verdict(Outcome.ERROR, started, "cancelled")
            return None

        watched = watch_process(done, worker, deadline, stall=self.options.stall, interval=POLL_INTERVAL)
        if not watched.hung:
            return watched.value
        return self._hang(started, watched.rule, seen["pid"], watched.snapshot, seen["at"])

    @staticmethod
    def _since(t: float | None) -> float | None:
        return None if t is None else time.monotonic() - t

    def _hang(self, started: float, rule: str, pid: int | None, snap: procinfo.ProcSnapshot | None,
              reached: float | None) -> RunnerVerdict:
        latency = self._since(reached)
        s = self.scenario
        evidence: dict = {}
        if pid is not None and snap is not None:
            from ..capture import capture_forked_child

            try:
                parent = psutil.Process(pid).ppid()
            except psutil.Error:
                parent = 0
            evidence = capture_forked_child(
                pid, parent, snap, "runner", s.name, f"runner worker capture ({s.runner}/{s.variant})",
                self.options.log_dir, full=self.options.capture,
                verdict=f"HANG ({rule}): the work sent to {s.runner} ({s.variant}) is stuck in pid {pid}",
                parent_label="process that forked it", child_label="worker", parent_word="process that forked it")
        from ..capture import hang_detail

        detail = hang_detail(rule, self.options.timeout, evidence, pid is not None, where="a worker")
        note = self.driver.note(self.ctx)
        detail = f"{note}; {detail}" if note else detail
        return self._verdict(Outcome.HANG, started, detail, rule=rule, worker_pid=pid,
                             verdict_seconds=latency, evidence=evidence or None)
