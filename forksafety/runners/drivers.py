"""What is particular to each runner: processes to start, how work is sent, when it
is done. Every claim a variant rests on names where it comes from; the expected
outcomes are the ones measured here (docs/RUNNERS.md).
"""

from __future__ import annotations

import signal
import sys
import threading

from ..outcome import Outcome
from .model import Context, Driver, Proc, is_ours, judge_result, log_cause, serving
from .work import DEFAULT_TEXTS

PY = sys.executable
TEXTS = DEFAULT_TEXTS  # what the examples add (runner_examples.common)


class HttpRequest:
    """One real HTTP request in a background thread (httpx, bounded by ``timeout`` s):
    the watch loop keeps looking at the worker while the server holds the request."""

    def __init__(self, method: str, url: str, timeout: float) -> None:
        self.response = None
        self.error: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(method, url, timeout), daemon=True,
                                        name="forksafety-http")
        self._thread.start()

    def _run(self, method: str, url: str, timeout: float) -> None:
        import httpx

        try:
            self.response = httpx.request(method, url, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is the request's outcome
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def join(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the thread; the servers are stopped by then, so it ends."""
        self._thread.join(timeout)


def http_outcome(request: HttpRequest) -> tuple[Outcome, str] | None:
    """(outcome, detail) once the request ended: PASS when the server answered 200
    with the documents, ERROR otherwise; None while it runs."""
    if not request.done.is_set():
        return None
    if request.error is not None:
        return Outcome.ERROR, f"request failed: {request.error}"[:300]
    if request.response.status_code != 200:
        return Outcome.ERROR, f"HTTP {request.response.status_code}: {request.response.text[:200]}"
    try:
        body = request.response.json()
    except ValueError:
        return Outcome.ERROR, f"not JSON: {request.response.text[:200]}"
    return judge_result(body, TEXTS)


class HttpServerDriver(Driver):
    """A server runner: start it on the scenario's port, POST /documents over loopback."""

    needs_port = True

    def send(self, ctx: Context) -> None:
        ctx.state["texts"] = TEXTS
        ctx.state["request"] = HttpRequest("POST", f"http://127.0.0.1:{ctx.port}/documents",
                                           timeout=ctx.options.timeout + 5)

    def poll(self, ctx: Context) -> tuple[Outcome, str] | None:
        return http_outcome(ctx.state["request"])

    def cleanup(self, ctx: Context) -> None:
        if "request" in ctx.state:
            ctx.state["request"].join()


class Gunicorn(HttpServerDriver):
    """Gunicorn, sync worker, one worker. ``--preload`` loads the app in the master
    before forking the workers (gunicorn docs: settings, preload_app); without it each
    worker loads the app after the fork. ``post_fork`` runs in the worker after the fork."""

    programs = ("gunicorn",)

    def __init__(self, preload: bool, config: str | None = None, app: str = "runner_examples.wsgi_app:application"):
        self.preload, self.config, self.app = preload, config, app

    def processes(self, ctx: Context) -> list[Proc]:
        argv = [ctx.program("gunicorn"), "--workers", "1", "--worker-class", "sync",
                "--bind", f"127.0.0.1:{ctx.port}", "--no-control-socket", "--timeout", "600",
                "--graceful-timeout", "1", "--log-level", "info"]
        argv += ["--preload"] if self.preload else []
        argv += ["--config", self.config] if self.config else []
        return [Proc("gunicorn", argv + [self.app], ready=lambda: serving(ctx))]


class UWSGI(HttpServerDriver):
    """uWSGI with a master and one worker: the master loads the app, then forks the
    workers (uWSGI docs: "Things to know", lazy-apps); ``--lazy-apps`` loads it in each
    worker after the fork."""

    programs = ("uwsgi",)

    def __init__(self, lazy: bool):
        self.lazy = lazy

    def processes(self, ctx: Context) -> list[Proc]:
        from ..settings import REPO_ROOT

        argv = [ctx.program("uwsgi"), "--http-socket", f"127.0.0.1:{ctx.port}", "--master", "--processes", "1",
                "--home", sys.prefix, "--pythonpath", str(REPO_ROOT), "--die-on-term", "--need-app",
                "--module", "runner_examples.wsgi_app:application"]
        argv += ["--lazy-apps"] if self.lazy else []
        # SIGINT: uWSGI's immediate shutdown (SIGTERM is "brutal reload" without --die-on-term)
        return [Proc("uwsgi", argv, ready=lambda: serving(ctx), stop_signal=signal.SIGINT)]


class Multiprocessing(Driver):
    """A script that imports a job module creating the store, then runs one job in a
    one-worker Pool or ProcessPoolExecutor with the chosen start method."""

    def __init__(self, start_method: str, executor: str = "pool"):
        self.start_method, self.executor = start_method, executor

    def processes(self, ctx: Context) -> list[Proc]:
        ctx.state["texts"] = TEXTS
        return [Proc("main", [PY, "-m", "runner_examples.mp_main", "--start-method", self.start_method,
                              "--executor", self.executor], may_exit=True)]


class RQ(Driver):
    """RQ with its default fork-per-job ``Worker`` (``rq worker``), or RQ's preload
    worker script with Worker, SpawnWorker or SimpleWorker. The job is enqueued by
    its dotted path from this process (RQ supports that), so the runner never imports
    chromadb."""

    programs = ("rq",)
    needs_redis = True

    def __init__(self, preload: bool, worker_class: str = "Worker"):
        self.preload, self.worker_class = preload, worker_class

    def processes(self, ctx: Context) -> list[Proc]:
        queue = f"forksafety-{ctx.scenario.name}"
        ctx.state["queue"] = queue
        if self.preload:
            argv = [PY, "-m", "runner_examples.rq_preload_worker", queue, "--worker-class", self.worker_class]
        else:
            argv = [ctx.program("rq"), "worker", "--url", ctx.redis_url, "--worker-class",
                    f"rq.worker.{self.worker_class}", queue]
        return [Proc("worker", argv, stop_signal=signal.SIGTERM)]

    def send(self, ctx: Context) -> None:
        from redis import Redis
        from rq import Queue

        ctx.state["texts"] = TEXTS
        connection = Redis.from_url(ctx.redis_url, socket_timeout=5, socket_connect_timeout=5)
        ctx.state["redis"] = connection
        queue = Queue(ctx.state["queue"], connection=connection)
        ctx.state["job"] = queue.enqueue("runner_examples.rq_jobs.add_documents_job", TEXTS,
                                         job_timeout=int(ctx.options.timeout) + 60)
        ctx.state["checked"] = 0.0

    def poll(self, ctx: Context) -> tuple[Outcome, str] | None:
        import time

        ended = super().poll(ctx)
        if ended is not None:
            return ended
        now = time.monotonic()
        if now - ctx.state["checked"] < 0.2:  # RQ's job status: a Redis round trip, 5 times a second
            return None
        ctx.state["checked"] = now
        job = ctx.state["job"]
        status = job.get_status(refresh=True)
        if str(status) in ("failed", "JobStatus.FAILED", "stopped", "JobStatus.STOPPED"):
            info = job.latest_result()
            text = (info.exc_string or "").strip().splitlines()[-1:] if info is not None else []
            return Outcome.ERROR, f"RQ job {status}: {' '.join(text)}"[:300]
        return None

    def cleanup(self, ctx: Context) -> None:
        if "redis" in ctx.state:
            ctx.state["redis"].close()


class Huey(Driver):
    """``huey_consumer MODULE.huey -k process -w 1``; a producer process imports the
    task module and calls the task (as an app does)."""

    programs = ("huey_consumer",)
    needs_redis = True

    def __init__(self, module: str):
        self.module = module

    def processes(self, ctx: Context) -> list[Proc]:
        ctx.state["texts"] = TEXTS
        env = {"HUEY_NAME": f"forksafety-{ctx.scenario.name}"}
        # ready once it imported the module (a store created by the producer at the same time,
        # in the same fresh folder, would race chromadb's first-time schema set-up)
        consumer = Proc("consumer", [ctx.program("huey_consumer"), f"{self.module}.huey", "-k", "process",
                                     "-w", "1", "--no-periodic"], env=env, stop_signal=signal.SIGINT,
                        ready_line="Huey consumer started")
        producer = Proc("producer", [PY, "-m", "runner_examples.enqueue", "huey", self.module], env=env,
                        may_exit=True)
        return [consumer, producer]


class Dramatiq(Driver):
    """``dramatiq MODULE --processes 1 --threads 1``; a producer process imports the
    actor module and sends the message."""

    programs = ("dramatiq",)
    needs_redis = True

    def __init__(self, module: str = "runner_examples.dramatiq_actors", spawn: bool = False):
        self.module, self.spawn = module, spawn

    def processes(self, ctx: Context) -> list[Proc]:
        ctx.state["texts"] = TEXTS
        env = {"DRAMATIQ_QUEUE": f"forksafety-{ctx.scenario.name}"}
        argv = [ctx.program("dramatiq"), self.module, "--processes", "1", "--threads", "1"]
        argv += ["--use-spawn"] if self.spawn else []
        # ready once the worker process imported the actors (see Huey: no schema race with the producer)
        return [Proc("worker", argv, env=env, stop_signal=signal.SIGTERM, ready_line="Worker process is ready for action"),
                Proc("producer", [PY, "-m", "runner_examples.enqueue", "dramatiq", self.module], env=env,
                     may_exit=True)]


class FastAPIReplay(Driver):
    """The report's app: a Celery worker (prefork, one child), then the FastAPI app
    under uvicorn, then POST /documents and GET /status/<id> over loopback until the
    task's state is SUCCESS or FAILURE."""

    programs = ("celery", "uvicorn")
    needs_redis = True
    needs_port = True

    def __init__(self, tasks_module: str):
        self.tasks_module = tasks_module

    def processes(self, ctx: Context) -> list[Proc]:
        env = {"FORKSAFETY_TASKS_MODULE": self.tasks_module, "FORKSAFETY_QUEUE": f"forksafety-{ctx.scenario.name}"}
        worker = Proc("celery", [ctx.program("celery"), "-A", self.tasks_module, "worker", "--pool", "prefork",
                                 "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                                 "--without-heartbeat", "--hostname", f"{ctx.scenario.name}@%h"],
                      env=env, stop_signal=signal.SIGQUIT, ready_line=" ready.")
        server = Proc("uvicorn", [ctx.program("uvicorn"), "runner_examples.fastapi_app:app", "--host", "127.0.0.1",
                                  "--port", str(ctx.port), "--log-level", "info"],
                      env=env, ready=lambda: serving(ctx, "uvicorn"))
        return [worker, server]

    def send(self, ctx: Context) -> None:
        import httpx

        ctx.state["client"] = client = httpx.Client(base_url=f"http://127.0.0.1:{ctx.port}", timeout=5)
        ctx.state["states"] = []
        ctx.state["checked"] = 0.0
        reply = self._request(ctx, "POST", "/documents")
        if reply is not None:
            ctx.state["task_id"] = reply.json()["task_id"]

    def _request(self, ctx: Context, method: str, path: str):
        """One request to the app; None when it failed (``ctx.state["failed"]`` then says
        which request, how, whether the run's Redis answers, and the app's log)."""
        import httpx

        from ..loopback import redis_ping

        try:
            reply = ctx.state["client"].request(method, path)
            if reply.status_code == 200:
                return reply
            what = f"{method} {path} answered HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            what = f"{method} {path} failed: {type(exc).__name__}: {exc}"
        down = redis_ping(ctx.redis_url) if ctx.redis_url else None
        redis = f"; the Redis at {ctx.redis_url} does not answer ({down})" if down else ""
        ctx.state["failed"] = f"{what}{redis}; uvicorn log: {log_cause(ctx.proc('uvicorn').log)}"
        return None

    def _status(self, ctx: Context) -> dict | None:
        import time

        now = time.monotonic()
        if now - ctx.state["checked"] < 0.1:  # the status endpoint, 10 times a second
            return ctx.state.get("last")
        ctx.state["checked"] = now
        reply = self._request(ctx, "GET", f"/status/{ctx.state['task_id']}")
        if reply is None:
            return None
        body = reply.json()
        ctx.state["last"] = body
        if not ctx.state["states"] or ctx.state["states"][-1] != body["state"]:
            ctx.state["states"].append(body["state"])
        return body

    def poll(self, ctx: Context) -> tuple[Outcome, str] | None:
        if "failed" in ctx.state:
            return Outcome.ERROR, ctx.state["failed"]
        body = self._status(ctx)
        if "failed" in ctx.state:
            return Outcome.ERROR, ctx.state["failed"]
        if body is None:
            return None
        states = " -> ".join(ctx.state["states"])
        if body["state"] == "SUCCESS":
            outcome, detail = judge_result(body.get("result"), TEXTS)
            return outcome, f"status {states}; {detail}"
        if body["state"] == "FAILURE":
            crash = "WorkerLostError" in body.get("error", "")
            return (Outcome.CRASH if crash else Outcome.ERROR), f"status {states}: {body.get('error')}"[:300]
        return None

    def worker_pid(self, ctx: Context) -> int | None:
        body = ctx.state.get("last") or {}
        pid = (body.get("info") or {}).get("pid")  # the pool child, from the STARTED state's meta
        return pid if isinstance(pid, int) and is_ours(ctx, pid) else None

    def note(self, ctx: Context) -> str:
        """The states the status endpoint reported, in order (e.g. ``status PENDING -> STARTED``)."""
        return "status " + " -> ".join(ctx.state.get("states") or ["(never asked)"])

    def cleanup(self, ctx: Context) -> None:
        if "client" in ctx.state:
            ctx.state["client"].close()
