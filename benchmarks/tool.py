#!/usr/bin/env python3
"""Figures of the installable tool (issue 13): wheel install time, ``inspect`` latency on a
hung child, the pytest plugin's overhead per fork, and ``check``'s overhead over the
target's own import.

    .venv/bin/python benchmarks/tool.py            # 3 runs each
    .venv/bin/python benchmarks/tool.py --runs 5

* wheel install: ``pip install forksafety-*.whl`` into a fresh venv, median wall time, two
  ways: pip resolving psutil against a local wheelhouse of the locked psutil
  (``--no-index --find-links``: no network in the figure), and as a user does, from the
  package index (or pip's cache). The wheel is built once with ``python -m build
  --no-isolation`` (forksafety.docs_tool.build_dists);
* inspect latency: ``python -m forksafety inspect PID`` (a fresh CLI process, verdict,
  stacks with py-spy and pystack when installed, capture file written) on a forked child
  deadlocked on a lock a parent thread held at fork time: the same ``deadlock-proven``
  state as a hung Celery pool child (one thread, untimed private futex wait). Target < 2 s;
* plugin overhead per fork: one ``os.fork()`` + ``waitpid`` in a process with one live
  thread, with the guard the plugin installs (warn mode: the message is built at each
  fork) against without; median over many forks;
* check overhead: benchmarks/check_overhead.py (budget 0.5 s), run here and its figure printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
def run(cmd: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {done.returncode}: {done.stderr[-800:]}")
    return done


def wheel_install(runs: int, scratch: Path, local: bool) -> list[float]:
    """Seconds of ``pip install WHEEL`` into fresh venvs: from the locked wheelhouse (``local``) or the index."""
    from forksafety.docs_tool import build_dists, locked_wheelhouse

    wheels = list((scratch / "dist").glob("forksafety-*.whl"))
    wheel = wheels[0] if wheels else build_dists(scratch, sdist=False)[0]
    source = ["--no-index", "--find-links", locked_wheelhouse()] if local else []
    times = []
    for i in range(runs):
        venv = scratch / f"venv-{'local' if local else 'index'}{i}"
        run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
        started = time.perf_counter()
        run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", *source, wheel])
        times.append(time.perf_counter() - started)
    return times


def time_inspect(child: int, runs: int, scratch: Path) -> list[float]:
    """Wall times (seconds) of ``python -m forksafety inspect CHILD``, which must say DEADLOCK-PROVEN."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = run([sys.executable, "-m", "forksafety", "inspect", child, "--log-dir", scratch / "dumps"],
                  env=env, cwd=scratch, timeout=60)
        times.append(time.perf_counter() - started)
        assert "DEADLOCK-PROVEN" in out.stdout, out.stdout + out.stderr
    return times


def inspect_latency(runs: int, scratch: Path) -> list[float]:
    """On a child deadlocked on a lock its parent's thread held at fork time."""
    from forksafety.docs_tool import lock_deadlocked_child

    with lock_deadlocked_child() as child:
        return time_inspect(child, runs, scratch)


def inspect_latency_celery(runs: int, scratch: Path) -> list[float]:
    """On a real hung Celery prefork pool child (the harness's worker, ChromaDB at module level)."""
    from forksafety.broker import resolve_broker
    from forksafety.harness import hung_pool_child
    from forksafety.settings import load_settings

    settings = load_settings(environ={**os.environ, "CHROMA_DIR": str(scratch / "chroma"), "PROVIDER": "fake",
                                      "API_KEY": ""}, env_file=scratch / "none")
    broker = resolve_broker("auto", settings.redis_url)
    try:
        with hung_pool_child(broker, settings, scratch / "worker") as (child, _worker):
            return time_inspect(child, runs, scratch)
    finally:
        broker.cleanup()


def fork_cost(forks: int) -> float:
    """Median seconds of one os.fork() + child exit + waitpid in this process."""
    times = []
    for _ in range(forks):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def plugin_overhead(forks: int) -> tuple[float, float]:
    """(median fork without the guard, with it) in seconds, with one live thread."""
    from forksafety import guard

    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        plain = fork_cost(forks)
        guard.install("warn", context=lambda: "test bench::fork")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", guard.ForkSafetyWarning)
            guarded = fork_cost(forks)
        guard.uninstall()
        return plain, guarded
    finally:
        stop.set()
        thread.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed command (default 3)")
    parser.add_argument("--forks", type=int, default=200, help="forks for the plugin overhead (default 200)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="forksafety-bench-tool-"))
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs")
        for local, how in ((True, "psutil from the locked wheelhouse, --no-index"), (False, "from the index")):
            t = wheel_install(args.runs, scratch, local)
            print(f"wheel install (pip install forksafety-*.whl, fresh venv, {how}): median "
                  f"{statistics.median(t):.2f} s (runs: {', '.join(f'{x:.2f}' for x in t)})")
        t = inspect_latency(args.runs, scratch)
        print(f"inspect latency on a hung child (deadlock-proven, stacks, capture file): median "
              f"{statistics.median(t):.2f} s, max {max(t):.2f} s (target < 2 s)")
        t = inspect_latency_celery(args.runs, scratch)
        print(f"inspect latency on a hung Celery prefork pool child (chromadb at module level): median "
              f"{statistics.median(t):.2f} s, max {max(t):.2f} s (target < 2 s)")
        plain, guarded = plugin_overhead(args.forks)
        print(f"pytest plugin overhead per fork (1 live thread, warn): {1000 * (guarded - plain):+.2f} ms "
              f"({1000 * plain:.2f} ms without, {1000 * guarded:.2f} ms with; median of {args.forks} forks); "
              "off: no hook is installed")
        done = run([sys.executable, str(REPO / "benchmarks" / "check_overhead.py"), "--runs", str(args.runs),
                    "forksafety.cases.plain", "celery_examples.tasks_pool_test"], timeout=1200)
        print(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
