"""Run one Celery scenario for real: start a worker, wait until it is ready, send
the task by name, watch the pool child, classify the outcome, stop everything.

The runner process never imports chromadb: tasks are sent by name through an
app made by ``forksafety.app.make_app``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import escapes, poolstart, procinfo
from .app import READY_FILE_ENV, make_app
from .chromaserver import ChromaServer
from .broker import Broker
from .errors import UsageError
from .outcome import Expected, Outcome, Verdict, expected_outcome
from .settings import REPO_ROOT, Settings
from .variants import CELERY, resolve_variant
from .watch import (RULE_DEADLINE, RULE_PROVEN, RUN_ID_ENV, SCENARIO_ENV, group_alive, make_temp_dir, pdeathsig_preexec, stop_tree,
                    sweep_run, wait_until, watch_process)

POOLS = ("prefork", "threads", "solo", "gevent", "eventlet")
DEFAULT_TEXTS = ["fork-safety check: first document", "fork-safety check: second document"]
TASK_MODULE = "celery_examples.tasks_pool_test"
POLL_INTERVAL = 0.02  # seconds between two looks at the result and the child
# Seconds a worker gets after SIGQUIT (Celery's cold shutdown) before SIGKILL. The
# verdict is already recorded and the run's keys are deleted by prefix, so nothing
# is lost by not waiting longer; measured: a cold shutdown takes over 1 s here.
STOP_GRACE = 0.3

# Prefork fix variants: the task module each one imports, and extra worker environment.
VARIANTS: dict[str, dict] = {
    "module-level": {"module": TASK_MODULE},
    "worker-process-init": {"module": "celery_examples.tasks_worker_process_init"},
    "lazy": {"module": "celery_examples.tasks_lazy"},
    "lazy-in-task": {"module": "celery_examples.tasks_lazy_in_task"},
    "spawn": {"module": TASK_MODULE, "env": {"POOL_START_METHOD": "spawn"}},
    "forkserver": {"module": TASK_MODULE, "env": {"POOL_START_METHOD": "forkserver"}},
    # Chroma's own escape hatches (forksafety/escapes.py)
    "segment-api": {"module": "celery_examples.tasks_segment_api", "expected": escapes.expected_segment_api},
    "chroma-server": {"module": "celery_examples.tasks_http_client", "server": "chroma"},
}


def make_scenario(pool: str, variant: str = "module-level", concurrency: int = 1) -> Scenario:
    """The Scenario for ``pool`` / ``variant`` (raises UsageError for an unknown one)."""
    if pool not in POOLS:
        raise UsageError(f"unknown pool {pool!r}", f"use one of {', '.join(POOLS)}")
    variant = resolve_variant(variant, CELERY)
    if variant != "module-level" and pool != "prefork":
        raise UsageError(f"variant {variant!r} applies to the prefork pool only, not to --pool {pool}",
                         f"run --pool {pool} and the prefork variants separately")
    spec = VARIANTS[variant]
    module = spec["module"]
    return Scenario(pool=pool, variant=variant, module=module, task=f"{module}.add_documents_task",
                    concurrency=concurrency, env=tuple(sorted(spec.get("env", {}).items())),
                    expected=spec["expected"]() if "expected" in spec else None)


def select_scenarios(pools: list[str] | None, variants: list[str] | None, everything: bool,
                     concurrency: int = 1) -> list[Scenario]:
    """Scenarios for the CLI's --pool / --variant / --all (in a stable order, no duplicates).

    --all: every pool with the module-level store, then prefork with every other variant.
    --pool: that pool with the module-level store. --variant: prefork with that variant
    (variants exist for prefork only, so ``--pool threads --variant lazy`` runs
    threads/module-level and prefork/lazy; ``--pool prefork --variant lazy`` runs prefork/lazy).
    """
    pairs: list[tuple[str, str]] = []
    if everything:
        pairs += [(p, "module-level") for p in POOLS]
        pairs += [("prefork", v) for v in VARIANTS if v != "module-level"]
    for pool in pools or []:
        if not (pool == "prefork" and variants):
            pairs.append((pool, "module-level"))
    for variant in variants or []:
        pairs.append(("prefork", variant))
    seen: set[tuple[str, str]] = set()
    unique = [p for p in pairs if not (p in seen or seen.add(p))]
    return [make_scenario(pool, variant, concurrency) for pool, variant in unique]


@dataclass(frozen=True)
class Scenario:
    """One worker run: a pool, a fix variant, the task module and task to send.

    concurrency: pool size (children for prefork, threads/greenlets otherwise).
    env: extra environment for the worker (e.g. the start method).
    expected: None means ``expected_outcome(pool, variant)``.
    check: how a successful return value is judged ("documents": the texts we sent
      must come back with one id each; "any": any return value is a PASS).
    """

    pool: str
    variant: str = "module-level"
    module: str = TASK_MODULE
    task: str = f"{TASK_MODULE}.add_documents_task"
    args: tuple = (DEFAULT_TEXTS,)
    concurrency: int = 1
    env: tuple[tuple[str, str], ...] = ()
    expected: Expected | None = None
    check: str = "documents"

    @property
    def name(self) -> str:
        """File-name-safe name, e.g. ``prefork_module-level``."""
        return f"{self.pool}_{self.variant}"

    def expect(self, start_method: str | None = "fork") -> Expected:
        """The expected outcome of this scenario on this platform, for the start
        method its pool child used (see forksafety/poolstart.py)."""
        return self.expected or expected_outcome(self.pool, self.variant, start_method=start_method)


@dataclass
class RunOptions:
    """Bounds and places for a run. All durations are seconds.

    timeout: deadline for the task, from sending it.
    stall: window of the ``stalled`` hang rule.
    startup_timeout: how long a worker may take to become ready.
    log_dir: where worker logs and captures go (crash_dumps/).
    capture: capture evidence from a hung child before stopping it.
    """

    timeout: float = 20.0
    stall: float = 2.0
    startup_timeout: float = 90.0
    log_dir: Path = REPO_ROOT / "crash_dumps"
    keep_data: bool = False
    capture: bool = True
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")


_SIGNAL_RE = re.compile(r"signal (\d+) \((SIG\w+)\)")


def _crash_signal(text: str) -> str | None:
    """Signal name from Celery's WorkerLostError text, e.g. 'signal 5 (SIGTRAP)'."""
    match = _SIGNAL_RE.search(text)
    if match:
        return match.group(2)
    number = re.search(r"signal (\d+)", text)
    if number:
        try:
            return signal.Signals(int(number.group(1))).name
        except ValueError:
            return None
    return None


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cause(path: Path) -> str:
    """The last line of a worker log that names an exception (the reason it died)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if re.match(r"^\s*[\w.]+(Error|Exception|Exit)\b.*:", line) or "Error:" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "(empty log)"


def _judge_return(value: object, scenario: Scenario) -> tuple[Outcome, str]:
    if scenario.check == "any":
        return Outcome.PASS, f"task returned {value!r}"[:200]
    texts = list(scenario.args[0]) if scenario.args else []
    if isinstance(value, dict) and value.get("texts") == texts and len(value.get("ids") or []) == len(texts):
        return Outcome.PASS, f"task added {len(texts)} documents"
    return Outcome.ERROR, f"task returned something other than the documents it was sent: {value!r}"[:300]


class ScenarioRun:
    """One scenario, start to finish. Use ``run()``; the worker is always stopped."""

    def __init__(self, scenario: Scenario, broker: Broker, settings: Settings, options: RunOptions,
                 progress: Callable[[str, str], None] | None = None) -> None:
        self.scenario = scenario
        self.broker = broker
        self.settings = settings
        self.options = options
        self.progress = progress or (lambda name, status: None)
        self.queue = f"forksafety.{options.run_id}.{scenario.name}"
        self.chroma_dir = settings.chroma_dir / f"run-{options.run_id}-{scenario.name}"
        self.log_path = options.log_dir / f"worker_{scenario.name}.log"
        if scenario.variant == "module-level":
            self.log_path = options.log_dir / f"worker_{scenario.pool}.log"
        self.worker: subprocess.Popen | None = None
        self.server: ChromaServer | None = None  # the chroma-server variant's `chroma run`
        self._tmp: Path | None = None  # made in start(), removed in _cleanup()
        self._cancelled = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def scenario_id(self) -> str:
        """The FORKSAFETY_SCENARIO tag every process of this scenario carries."""
        return f"{self.options.run_id}/{self.scenario.name}"

    @property
    def ready_file(self) -> Path:
        """The file Celery's worker_ready signal writes (see forksafety.app)."""
        assert self._tmp is not None, "start() makes the run's temporary folder"
        return self._tmp / "ready.json"

    # -- worker life -------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``celery worker`` command line this scenario runs."""
        s = self.scenario
        return [
            sys.executable, "-m", "celery", "-A", s.module, "worker",
            "--pool", s.pool, "--concurrency", str(s.concurrency), "--loglevel", "INFO",
            "--hostname", f"{s.name}.{os.getpid()}@%h", "--queues", self.queue,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]

    def worker_environment(self) -> dict[str, str]:
        """Environment of the worker: ours, plus broker, queue, chroma dir, ready file."""
        env = dict(os.environ)
        env.update(self.broker.worker_env(self.queue))
        env.pop("POOL_START_METHOD", None)  # the scenario decides: --variant spawn / forkserver
        env.update(dict(self.scenario.env))
        env["CHROMA_DIR"] = str(self.chroma_dir)
        env[READY_FILE_ENV] = str(self.ready_file)
        # billiard's pymp-* folders (and anything else the worker puts in the temp
        # dir) land in our folder, which is removed even when the worker is killed
        env["TMPDIR"] = str(self._tmp)
        env[RUN_ID_ENV] = self.options.run_id
        env[SCENARIO_ENV] = self.scenario_id
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if self.server is not None:
            env.update(self.server.client_env())
        return env

    def start(self) -> None:
        """Start the worker in its own process group, its log in ``log_path``."""
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        self.chroma_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = make_temp_dir("run")
        if VARIANTS.get(self.scenario.variant, {}).get("server") == "chroma":
            self.server = ChromaServer(self.chroma_dir / "server", self.options.log_dir / f"chroma_{self.scenario.name}.log",
                                       {**self.worker_environment(), "TMPDIR": str(self._tmp)})
            self.server.start(timeout=self.options.startup_timeout)
        with open(self.log_path, "w") as log:
            log.write(f"# {' '.join(self.command())}\n")
            log.flush()
            self.worker = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=self.worker_environment(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pdeathsig_preexec(),
            )

    def wait_ready(self) -> str | None:
        """Wait (bounded by ``startup_timeout``) for Celery's worker_ready signal.
        Returns None when ready, else why not."""
        assert self.worker is not None
        ready = wait_until(lambda: self.ready_file.exists() or self.worker.poll() is not None
                           or self._cancelled.is_set(), self.options.startup_timeout, interval=0.05)
        if self._cancelled.is_set():
            return "cancelled"
        if self.ready_file.exists():
            return None
        if self.worker.poll() is not None:
            return (f"worker exited with code {self.worker.returncode} before it was ready: "
                    f"{_cause(self.log_path)}\n{_tail(self.log_path)}")
        assert not ready
        return f"worker not ready after {self.options.startup_timeout:g} s:\n{_tail(self.log_path)}"

    def stop(self) -> None:
        """Stop the worker and every process it forked: SIGQUIT (Celery's cold
        shutdown: running tasks are not waited for), STOP_GRACE seconds, then SIGKILL.
        Thread-safe and idempotent."""
        with self._stop_lock:
            if self.worker is None or self.worker.returncode is not None and not group_alive(self.worker.pid):
                return
            stop_tree(self.worker.pid, grace=STOP_GRACE, sig=signal.SIGQUIT, pgid=self.worker.pid)
            try:
                self.worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            # a pool child forked while we stopped the tree (billiard replaces dead
            # children) is not in the tree we collected: find it by its tag
            sweep_run(self.scenario_id, grace=0.5, name=SCENARIO_ENV)

    def cancel(self) -> None:
        """Stop this scenario now (from any thread): its loops end, its worker is stopped."""
        self._cancelled.set()
        self.stop()
        if self.server is not None:
            self.server.stop()

    # -- the scenario --------------------------------------------------------------
    def run(self) -> Verdict:
        """Run the scenario and return its verdict. Never raises for a scenario that
        goes wrong (that is an ERROR verdict); always stops the worker."""
        started = time.monotonic()
        verdict = None
        try:
            self.progress(self.scenario.name, "starting worker")
            self.start()
            problem = self.wait_ready()
            if problem:
                verdict = self._verdict(Outcome.ERROR, started, problem)
            else:
                ready_seconds = time.monotonic() - started
                self.progress(self.scenario.name, "task sent")
                verdict = self._send_and_watch(started)
                verdict.extra["worker_ready_seconds"] = round(ready_seconds, 3)
                verdict.extra["task_seconds"] = round(time.monotonic() - started - ready_seconds, 3)
        except Exception as exc:  # noqa: BLE001 - a scenario that goes wrong is an ERROR verdict
            verdict = self._verdict(Outcome.ERROR, started, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.progress(self.scenario.name, "stopping worker")
            self.stop()
            self._cleanup()
        verdict.seconds = time.monotonic() - started
        self._log_footer(verdict)
        self.progress(self.scenario.name, "done")
        return verdict

    def _verdict(self, outcome: Outcome, started: float, detail: str, **kw) -> Verdict:
        start_method, child = poolstart.start_method_of(self.scenario.pool, dict(self.scenario.env), self._tmp,
                                                        kw.get("child_pid"))
        verdict = Verdict(pool=self.scenario.pool, variant=self.scenario.variant, outcome=outcome,
                          expected=self.scenario.expect(start_method.split(" ")[0]), seconds=time.monotonic() - started,
                          detail=detail, worker_log=str(self.log_path), start_method=start_method, **kw)
        if child:
            verdict.extra["pool_child"] = child  # what the child said about itself (poolstart.child_record)
        return verdict

    def _send_and_watch(self, started: float) -> Verdict:
        s = self.scenario
        app = make_app("forksafety-runner", environ=self.broker.worker_env(self.queue))
        self._sent_wall = time.time()
        result = app.send_task(s.task, args=list(s.args), queue=self.queue)
        deadline = time.monotonic() + self.options.timeout
        seen_child: dict = {"pid": None, "at": None}  # the pool child, once the task reached it (STARTED)

        def done() -> Verdict | None:
            """The verdict once the task or the worker ended (or we were cancelled), else None."""
            child_pid, started_seen = seen_child["pid"], seen_child["at"]
            state = result.state
            if state == "SUCCESS":
                outcome, detail = _judge_return(result.result, s)
                return self._verdict(outcome, started, detail, child_pid=child_pid,
                                     verdict_seconds=self._since(started_seen))
            if state == "FAILURE":
                exc = result.result
                text = f"{type(exc).__name__}: {exc}"
                if type(exc).__name__ == "WorkerLostError" or "Worker exited prematurely" in str(exc):
                    return self._verdict(Outcome.CRASH, started, text, signal=_crash_signal(str(exc)),
                                         child_pid=child_pid, verdict_seconds=self._since(started_seen))
                return self._verdict(Outcome.ERROR, started, text[:500], child_pid=child_pid,
                                     verdict_seconds=self._since(started_seen))
            if state == "STARTED" and child_pid is None:
                # result.info reads the backend each time: read it once, or the state can
                # move on between the type check and the use (a race seen under load).
                raw = result.info
                info = raw if isinstance(raw, dict) else {}
                if isinstance(info.get("pid"), int):
                    seen_child["pid"], seen_child["at"] = info["pid"], time.monotonic()
                    self.progress(s.name, f"running in pid {info['pid']}")
            if self.worker.poll() is not None:
                code = self.worker.returncode
                return self._verdict(Outcome.CRASH if code < 0 else Outcome.ERROR, started,
                                     f"worker main process exited with code {code}",
                                     signal=signal.Signals(-code).name if code < 0 else None)
            if self._cancelled.is_set():
                return self._verdict(Outcome.ERROR, started, "cancelled")
            return None

        try:
            seen = watch_process(done, lambda: seen_child["pid"], deadline, stall=self.options.stall,
                                 interval=POLL_INTERVAL)
            if not seen.hung:
                return seen.value
            return self._hang(started, seen.rule, seen_child["pid"], seen.snapshot, seen_child["at"])
        finally:
            try:
                result.forget() if self.broker.kind != "filesystem" else None
            except Exception:  # noqa: BLE001 - the run's keys are deleted by Broker.cleanup anyway
                pass
            app.close()

    @staticmethod
    def _since(t: float | None) -> float | None:
        return None if t is None else time.monotonic() - t

    def _hang(self, started: float, rule: str, child_pid: int | None,
              snap: procinfo.ProcSnapshot | None, started_seen: float | None) -> Verdict:
        latency = self._since(started_seen)
        evidence = self._evidence(child_pid, snap, f"HANG ({rule}): the task sent to the {self.scenario.pool} "
                                  f"pool ({self.scenario.variant}) is stuck in pool child {child_pid}")
        if evidence and child_pid is not None:
            try:  # when was the child forked? (Celery's prefork pool forks at pool start)
                born = psutil.Process(child_pid).create_time()
                evidence["child_forked_before_task_seconds"] = round(self._sent_wall - born, 2)
            except (psutil.Error, AttributeError):
                pass
        from .capture import hang_detail

        detail = hang_detail(rule, self.options.timeout, evidence, child_pid is not None)
        return self._verdict(Outcome.HANG, started, detail, rule=rule, child_pid=child_pid,
                             verdict_seconds=latency, evidence=evidence or None)

    def _evidence(self, child_pid: int | None, snap: procinfo.ProcSnapshot | None, verdict: str = "") -> dict:
        """Evidence from the hung child before it is stopped (see forksafety.capture)."""
        if child_pid is None or snap is None or self.worker is None:
            return {}
        from .capture import capture_celery_child

        return capture_celery_child(
            child_pid=child_pid, worker_pid=self.worker.pid, snap=snap,
            pool=self.scenario.pool, variant=self.scenario.variant,
            log_dir=self.options.log_dir, full=self.options.capture, verdict=verdict,
        )

    def _log_footer(self, verdict: Verdict) -> None:
        """Say at the end of the worker log what the runner concluded (a hung worker's
        log otherwise just stops at "Task ... received")."""
        if self.worker is None:
            return
        text = verdict.outcome_text()
        lines = [f"# forksafety runner: outcome {text}, expected {verdict.expected}: {verdict.detail.splitlines()[0]}"
                 if verdict.detail else f"# forksafety runner: outcome {text}, expected {verdict.expected}"]
        if verdict.evidence and verdict.evidence.get("log"):
            lines.append(f"# evidence from the pool child: {verdict.evidence['log']}")
        lines.append("# the worker was stopped by the runner")
        try:
            with open(self.log_path, "a") as log:
                log.write("\n".join(lines) + "\n")
        except OSError:
            pass

    def _cleanup(self) -> None:
        import shutil

        if self.server is not None:  # after the worker (stop() came first): nothing talks to it now
            self.server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if not self.options.keep_data:
            shutil.rmtree(self.chroma_dir, ignore_errors=True)



def run_scenario(scenario: Scenario, broker: Broker, settings: Settings, options: RunOptions,
                 progress: Callable[[str, str], None] | None = None) -> Verdict:
    """Run one scenario for real and return its Verdict (the worker is always stopped)."""
    return ScenarioRun(scenario, broker, settings, options, progress).run()


@contextlib.contextmanager
def hung_pool_child(broker: Broker, settings: Settings, log_dir: Path,
                    timeout: float = 60.0) -> Iterator[tuple[int, int]]:
    """Start the prefork worker on the bug's task module, send the task, and yield
    ``(pool child pid, worker pid)`` once the child is a proven deadlock (the one watch
    loop, ``watch_process``: one thread in an untimed private futex wait), for a tool
    to inspect a real hung child (``forksafety inspect``, make docs, the benchmark).
    The worker and every process it forked are stopped on every path. Raises
    RuntimeError when the worker is not ready, the task does not reach a pool child,
    or the child is not a proven deadlock within ``timeout`` seconds each."""
    run = ScenarioRun(make_scenario("prefork"), broker, settings,
                      RunOptions(timeout=timeout, log_dir=log_dir, capture=False))
    app = None
    try:
        run.start()
        problem = run.wait_ready()
        if problem is not None:
            raise RuntimeError(f"the prefork worker did not start: {problem}")
        app = make_app("forksafety-hung-child", environ=broker.worker_env(run.queue))
        result = app.send_task(run.scenario.task, args=list(run.scenario.args), queue=run.queue)
        child = wait_until(lambda: result.info.get("pid") if result.state == "STARTED" and
                           isinstance(result.info, dict) else None, timeout)
        if not child:
            raise RuntimeError(f"the task did not start in a pool child within {timeout:g} s")
        seen = watch_process(lambda: result.state if result.state in ("SUCCESS", "FAILURE") else None, child,
                             time.monotonic() + timeout, stall=run.options.stall, interval=POLL_INTERVAL)
        if seen.rule != RULE_PROVEN:
            raise RuntimeError(f"pool child {child} is not a proven deadlock after {seen.seconds:.1f} s "
                               f"({seen.rule or 'the task ended: ' + str(seen.value)})")
        yield child, run.worker.pid
    finally:
        if app is not None:
            app.close()
        run.stop()
        run._cleanup()
