"""Which versions hang: one environment per version set, the fork demo and the Celery
prefork module-level scenario run in each, with this checkout's harness.

A version set is a small hash-pinned lock under ``versions/`` (generated with
``uv pip compile --generate-hashes``, index lines stripped; its ``#`` header says
what it is). Its environment is built with the set's Python into
``.versions/<set>-<key>/`` (gitignored), ``key`` being the sha256 of the lock and
the interpreter's version: ``python -m venv``, ``pip install --no-deps
--require-hashes -r <lock>``, ``pip check``. The file ``.complete`` is written
LAST, so an environment whose build was killed is never taken as complete: the
next run removes it and builds again. Every build step and every run is bounded
(``BUILD_TIMEOUT``, ``RUN_TIMEOUT`` seconds).

Every process a matrix run starts carries ``FORKSAFETY_VERSIONS_RUN=<run id>``
(children inherit it), runs through ``capture.run_tool`` (own session,
PR_SET_PDEATHSIG, its group stopped on timeout or interrupt) and is swept at the end
(watch.sweep_run); the runs inside use the harness's own stopping of workers. The
run's scratch folder is a ``versions`` kind of watch.TEMP_KINDS, removed by the next
run when a killed one left it.

Library code: returns data, prints nothing; scripts/versions.py is the CLI.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .capture import run_tool
from .origins import Origins
from .outcome import Expected, Outcome, expected_outcome, outcome_text
from .report import write_json
from .settings import REPO_ROOT
from .watch import make_temp_dir, remove_stale_temp_folders

VERSIONS_DIR = REPO_ROOT / "versions"
CACHE_DIR = REPO_ROOT / ".versions"
COMPLETE = ".complete"
TAG_ENV = "FORKSAFETY_VERSIONS_RUN"
BUILD_TIMEOUT = 900.0  # seconds for one pip install (cold: downloads ~100 wheels)
RUN_TIMEOUT = 240.0  # seconds for the demo or the Celery scenario in one set
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class VersionSet:
    """One row of the matrix: ``name``, the Python ``python`` (``3.12``) and its lock
    file under versions/."""

    name: str
    python: str
    lock: str

    @property
    def lock_path(self) -> Path:
        """The lock's path (versions/<lock>)."""
        return VERSIONS_DIR / self.lock

    def header(self) -> list[str]:
        """The lock's ``#`` header lines, without the ``#``."""
        lines = []
        for line in self.lock_path.read_text().splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("# ").rstrip())
        return lines

    def known_conflicts(self) -> list[str]:
        """``# known-conflict: TEXT`` lines: ``pip check`` lines containing TEXT are expected."""
        return [h.split(":", 1)[1].strip() for h in self.header() if h.startswith("known-conflict:")]


SETS: tuple[VersionSet, ...] = (
    VersionSet("report-py3.12", "3.12", "report-py3.12.lock"),
    VersionSet("chromadb-0.6.3", "3.12", "chromadb-0.6.3.lock"),
    VersionSet("chromadb-1.0.0", "3.12", "chromadb-1.0.0.lock"),
    VersionSet("pins-py3.12", "3.12", "pins-py3.12.lock"),
    VersionSet("pins-py3.13", "3.13", "pins-py3.13.lock"),
)


class BuildError(Exception):
    """An environment could not be built (pip failed, pip check failed, timed out)."""


@dataclass
class SetResult:
    """What one version set gave. ``status``: ``ran``, ``skipped: ...`` or ``failed: ...``."""

    name: str
    python: str
    status: str = "ran"
    versions: dict = field(default_factory=dict)
    start_method: str = ""
    pool_start_method_setting: str = ""
    demo: dict = field(default_factory=dict)
    celery: dict = field(default_factory=dict)
    lost_threads: list[str] = field(default_factory=list)
    build: str = ""  # "cached" or "built in N s"
    seconds: float = 0.0
    expected: dict = field(default_factory=dict)  # {"demo": "HANG", "celery": "PASS"}: see expect()

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def find_python(version: str) -> str | None:
    """The interpreter for ``version`` (``3.13``): pyenv's ``~/.pyenv/versions/3.13.*``
    first, then ``python3.13`` on PATH; only one that really answers with that
    version (bounded: 20 s). None when there is none."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" / f"python{version}")), reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for exe in candidates:
        try:
            done = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return exe
    return None


def _full_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=20)
    return done.stdout.strip()


def env_dir(vset: VersionSet, python: str, cache: Path = CACHE_DIR) -> Path:
    """``cache/<set>-<key>``: key = sha256 of the lock's bytes and the interpreter's full version."""
    digest = hashlib.sha256(vset.lock_path.read_bytes() + _full_version(python).encode()).hexdigest()[:16]
    return cache / f"{vset.name}-{digest}"


def is_complete(folder: Path) -> bool:
    """True when ``folder``'s build finished: its ``.complete`` marker, written last and
    atomically (report.write_json), holds the JSON record of the build. An empty or torn
    marker (a build killed while it wrote one by hand, or a bad copy) does not count."""
    try:
        return "lock" in json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def build_env(vset: VersionSet, python: str, env: dict[str, str], cache: Path = CACHE_DIR,
              timeout: float = BUILD_TIMEOUT) -> tuple[Path, str]:
    """The environment of ``vset`` (built unless cached). Returns ``(folder, "cached" |
    "built in N s")``. Raises BuildError with pip's last lines when a step fails.

    Concurrent runs take an flock on ``<folder>.lock``; a folder without the
    ``.complete`` marker (a build that was killed) is removed first."""
    folder = env_dir(vset, python, cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(folder):
            return folder, "cached"
        t0 = time.monotonic()
        shutil.rmtree(folder, ignore_errors=True)
        steps = [
            [python, "-m", "venv", str(folder)],
            [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
             "-r", str(vset.lock_path)],
        ]
        for argv in steps:
            done = run_tool(argv, timeout, env=env)
            if done.returncode is None:  # not started (done.pid None), or stopped at the deadline
                raise BuildError(done.output.strip() if done.pid is None else
                                 f"{' '.join(argv[:4])} ... took more than {timeout:g} s")
            if done.returncode != 0:
                raise BuildError(f"{' '.join(argv[:4])} ... exited {done.returncode}: "
                                 + " | ".join(done.output.strip().splitlines()[-3:]))
        check = run_tool([str(folder / "bin" / "python"), "-m", "pip", "check"], 120, env=env)
        allowed = vset.known_conflicts()
        problems = [line for line in check.output.splitlines()
                    if line.strip() and not line.startswith("No broken") and not any(a in line for a in allowed)]
        if check.returncode != 0 and problems:
            raise BuildError("pip check: " + " | ".join(problems[:3]))
        write_json(folder / COMPLETE, {"lock": vset.lock, "python": python, "pip_check": check.output.strip()})
        return folder, f"built in {time.monotonic() - t0:.0f} s"


PROBE = ("import json, sys\nfrom importlib import metadata\n"
         "def v(n):\n    try:\n        return metadata.version(n)\n    except metadata.PackageNotFoundError:\n"
         "        return 'not installed'\n"
         "from celery.app.defaults import NAMESPACES\n"
         "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'celery': v('celery'),"
         " 'billiard': v('billiard'), 'chromadb': v('chromadb'), 'langchain-chroma': v('langchain-chroma'),"
         " 'langchain-core': v('langchain-core'),"
         " 'worker_pool_start_method': 'pool_start_method' in NAMESPACES['worker']}))\n")


# A thread that never named itself keeps the comm it was created with: the process's,
# i.e. the interpreter's file name (Linux: prctl(2) PR_SET_NAME, pthread_setname_np(3);
# CPython names threading.Thread OS threads only from 3.14). That is no thread name.
UNNAMED = re.compile(r"^python[0-9.]*$")


def _lost(names: list[str]) -> list[str]:
    """``["3x tokio-rt-worker", ..., "1x unnamed"]``: counts per thread name; threads
    without a name of their own (``UNNAMED``) are counted as ``unnamed``."""
    named = Counter(n for n in names if not UNNAMED.match(n))
    unnamed = sum(1 for n in names if UNNAMED.match(n))
    return [f"{n}x {name}" for name, n in sorted(named.items())] + ([f"{unnamed}x unnamed"] if unnamed else [])


def run_set(vset: VersionSet, folder: Path, workdir: Path, env: dict[str, str],
            timeout: float = RUN_TIMEOUT) -> SetResult:
    """Run the fork demo and the Celery prefork module-level scenario with ``folder``'s
    Python and this checkout's harness; read their JSON records. Never raises for a
    scenario that goes wrong: that is in the result."""
    py = str(folder / "bin" / "python")
    result = SetResult(vset.name, vset.python)
    probe = run_tool([py, "-c", PROBE], 60, env=env, cwd=REPO_ROOT)
    facts = json.loads(probe.output.strip().splitlines()[-1]) if probe.returncode == 0 else {}
    result.versions = {k: v for k, v in facts.items() if k != "worker_pool_start_method"}
    result.pool_start_method_setting = "available" if facts.get("worker_pool_start_method") else NOT_AVAILABLE
    demo_json, celery_json = workdir / f"{vset.name}-demo.json", workdir / f"{vset.name}-celery.json"
    runs = {
        "demo": ([py, "scripts/demo_crash.py", "--no-stacks", "--timeout", "10", "--json", str(demo_json),
                  "--log-dir", str(workdir / vset.name)], demo_json),
        "celery": ([py, "celery_examples/run_test.py", "--pool", "prefork", "--broker", "redis", "--no-capture",
                    "--json", str(celery_json), "--log-dir", str(workdir / vset.name)], celery_json),
    }
    for label, (argv, record) in runs.items():
        done = run_tool(argv, timeout, env={**env, "CHROMA_DIR": str(workdir / vset.name / "chroma")},
                           cwd=REPO_ROOT)
        output = done.output if done.returncode is not None else f"no result in {timeout:g} s"
        if record.exists():
            data = json.loads(record.read_text())
            setattr(result, label, data if label == "demo" else data["results"][0])
        else:
            setattr(result, label, {"outcome": "ERROR", "detail": " | ".join(output.strip().splitlines()[-3:])})
    result.start_method = result.celery.get("start_method") or ""
    evidence = result.celery.get("evidence") or {}
    result.lost_threads = _lost(evidence.get("lost_threads") or result.demo.get("lost_threads") or [])
    return result


def unsafe_by(origins: Origins) -> Callable[[str], bool]:
    """``unsafe(name)`` for ``expect``: True when the origin table (forksafety/threadorigins.json,
    origins.load_origins) says a forked child cannot do without a thread named ``name``
    (its entry's safety, under this process's environment, is ``unsafe``)."""

    def unsafe(name: str) -> bool:
        entry = origins.for_thread_name(name)
        return entry is not None and entry.effective()[0] == "unsafe"

    return unsafe


def expect(result: SetResult, unsafe: Callable[[str], bool], platform: str | None = None) -> dict[str, str]:
    """The expected outcomes of a set, derived from what happened in its processes:
    the threads the demo's parent had and its child lost (``unsafe(name)``: the origin
    table says a forked child cannot do without that thread), and the start method
    the Celery pool child reported. No unsafe thread lost (e.g. chromadb 0.6.3, no Rust
    core): the demo's clean exit (``Outcome.OK``) / ``PASS``. Else the demo (it calls
    os.fork() itself) expects what a forked child gets, and Celery what
    ``expected_outcome`` says for its start method."""
    forked = expected_outcome("prefork", start_method="fork", platform=platform)
    if not any(unsafe(name) for name in result.demo.get("lost_threads") or []):
        return {"demo": Outcome.OK.value, "celery": Outcome.PASS.value}
    celery = expected_outcome("prefork", start_method=(result.start_method or "fork").split(" ")[0], platform=platform)
    demo = forked if forked.outcome is not Outcome.PASS else Expected(Outcome.OK)
    return {"demo": str(demo), "celery": str(celery)}


def matched(result: SetResult) -> dict[str, bool]:
    """Per run: did the outcome match ``result.expected``? (HANG's rule is not compared.)"""
    return {label: bool(result.expected) and (record_text(record).split(" (")[0] == result.expected.get(label))
            for label, record in (("demo", result.demo), ("celery", result.celery))}


def record_text(record: dict) -> str:
    """``HANG (deadlock-proven)``, ``CRASH SIGTRAP``, ``PASS`` ... from a JSON record
    (outcome.outcome_text); "" for no record."""
    return outcome_text(record.get("outcome"), record.get("signal"), record.get("rule")) if record else ""


def run_matrix(sets: tuple[VersionSet, ...] | list[VersionSet], redis_url: str, run_id: str,
               cache: Path = CACHE_DIR, progress: Callable[[str], None] = lambda line: None,
               build_timeout: float = BUILD_TIMEOUT, run_timeout: float = RUN_TIMEOUT) -> list[SetResult]:
    """Build (or reuse) each set's environment and run it. A missing interpreter is
    ``skipped: python3.13 not found``; a failed build is ``failed: ...``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    env.update({TAG_ENV: run_id, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    results = []
    remove_stale_temp_folders(kinds=("versions",))  # left by a killed run
    tmp = make_temp_dir("versions")
    try:
        for vset in sets:
            t0 = time.monotonic()
            python = find_python(vset.python)
            if python is None:
                results.append(SetResult(vset.name, vset.python, status=f"skipped: python{vset.python} not found"))
                progress(f"{vset.name}: skipped: python{vset.python} not found")
                continue
            progress(f"{vset.name}: environment ({python})")
            try:
                folder, how = build_env(vset, python, env, cache, build_timeout)
            except (BuildError, OSError, subprocess.SubprocessError) as exc:
                results.append(SetResult(vset.name, vset.python, status=f"failed: {exc}"[:300]))
                progress(f"{vset.name}: build failed: {exc}")
                continue
            progress(f"{vset.name}: {how}; running the demo and the Celery prefork scenario")
            result = run_set(vset, folder, Path(tmp), env, run_timeout)
            result.build = how
            result.seconds = round(time.monotonic() - t0, 1)
            results.append(result)
            progress(f"{vset.name}: demo {record_text(result.demo)}, celery {record_text(result.celery)}"
                     f" ({result.seconds:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


COLUMNS = ("set", "Python", "celery", "billiard", "chromadb", "start method", "worker_pool_start_method",
           "demo outcome", "Celery outcome", "as expected", "threads the child lost")


def table_rows(results: list[SetResult]) -> list[list[str]]:
    """One row of ``COLUMNS`` per result (a skipped or failed set says so in the row)."""
    rows = []
    for r in results:
        if r.status != "ran":
            rows.append([r.name, r.python, r.status] + [""] * (len(COLUMNS) - 3))
            continue
        v = r.versions
        rows.append([r.name, v.get("python", r.python), v.get("celery", ""), v.get("billiard", ""),
                     v.get("chromadb", ""), r.start_method, r.pool_start_method_setting,
                     record_text(r.demo), record_text(r.celery),
                     "yes" if all(matched(r).values()) else "NO", ", ".join(r.lost_threads) or "none"])
    return rows


def text_table(results: list[SetResult]) -> str:
    """The table as aligned plain text (for the terminal and docs/VERSIONS.md)."""
    rows = [list(COLUMNS)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def thread_names(results: list[SetResult]) -> list[str]:
    """Every thread name the table prints (``unnamed`` is a count, not a name)."""
    names = set()
    for r in results:
        for item in r.lost_threads:
            names.add(item.split("x ", 1)[1])
    return sorted(names - {"unnamed"})


def current_python_tag() -> str:
    """``3.11`` for this interpreter."""
    return "%d.%d" % sys.version_info[:2]
