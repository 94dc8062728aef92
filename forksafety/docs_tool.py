"""The tool as users install it, built from this checkout: its wheel and sdist
(``build_dists``: ``python -m build --no-isolation`` with the locked build tooling), a
wheelhouse of its runtime dependency at the locked, hash-checked version
(``locked_wheelhouse``), and the ``make docs`` captures for the README's "Use it on your
own app": the tool installed from the wheel, ``check -A`` on the bug's Celery app,
``inspect`` on a real hung prefork pool child, and the pytest plugin on a small test
project. Each step is bounded.

An entry point's helper (layer 4): ``make docs`` (cli_docs), the tests and
benchmarks/tool.py use it; it runs our CLIs as subprocesses and the harness's worker
(``forksafety.harness.hung_pool_child``). Not part of the installed tool's work.

Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .settings import REPO_ROOT

PY = sys.executable
LOCK = REPO_ROOT / "requirements.lock"
STEP_TIMEOUT = 300.0  # seconds one capture or build step may take (a pip install may download)
# A forked child deadlocked on a lock its parent's thread held at fork time: one thread in an untimed
# private futex wait, the state of a hung Celery pool child, without Celery. Run with ``python -c``: prints
# the child's pid, and kills and reaps the child when its stdin closes.
LOCK_DEADLOCK_CHILD = """
import os, sys, threading, time
lock = threading.Lock()
held = threading.Event()
def hold():
    with lock:
        held.set()
        time.sleep(3600)
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    lock.acquire()  # the holder thread does not exist here: a proven deadlock
    os._exit(0)
print(pid, flush=True)
sys.stdin.read()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""
TEST_PROJECT = '''import os
from concurrent.futures import ThreadPoolExecutor


def test_fork_while_a_pool_runs():
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(int).result()      # the pool's worker thread now exists
        pid = os.fork()                # as a prefork pool, or multiprocessing's "fork" context, would
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def test_fork_alone():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
'''


@contextlib.contextmanager
def lock_deadlocked_child(python: str | Path = PY, timeout: float = 10.0) -> Iterator[int]:
    """Run LOCK_DEADLOCK_CHILD with ``python`` (in a session of its own) and yield the
    forked child's pid once it is a proven deadlock (``watch.watch_process``: one thread,
    an untimed private futex wait). Parent and child are stopped on every path
    (``watch.stop_group``). Raises RuntimeError when the child is not a proven deadlock
    within ``timeout`` seconds."""
    from .watch import RULE_PROVEN, stop_group, watch_process

    parent = subprocess.Popen([str(python), "-c", LOCK_DEADLOCK_CHILD], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([parent.stdout], [], [], timeout)
        line = parent.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"the lock-deadlock parent printed no child pid within {timeout:g} s")
        child = int(line)
        seen = watch_process(lambda: parent.poll(), child, time.monotonic() + timeout)
        if seen.rule != RULE_PROVEN:
            raise RuntimeError(f"child {child} is not a proven deadlock after {seen.seconds:.1f} s ({seen.rule})")
        yield child
    finally:
        parent.stdin.close()
        stop_group(parent, grace=2.0)


def package_source(folder: Path) -> Path:
    """Copy what the distribution is built from (pyproject.toml, README.md, forksafety/)
    into ``folder``, so a build leaves no build/ or egg-info in the checkout. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, folder / name)
    shutil.copytree(REPO_ROOT / "forksafety", folder / "forksafety", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def build_dists(out: Path, sdist: bool = True) -> tuple[Path, Path | None]:
    """Build the wheel (and the sdist) of this checkout into ``out/dist`` with
    ``python -m build --no-isolation``: the build backend is this interpreter's
    setuptools, installed from requirements.lock (hash-checked), so no build
    environment is resolved from a registry. Bounded by STEP_TIMEOUT seconds.
    Returns (wheel, sdist or None). Raises RuntimeError when the build fails."""
    src = package_source(out / "src")
    cmd = [PY, "-m", "build", "--no-isolation", "--wheel", *(["--sdist"] if sdist else []),
           "--outdir", str(out / "dist"), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"python -m build failed (exit {done.returncode}): {tail}")
    (wheel,) = (out / "dist").glob("forksafety-*.whl")
    tarballs = list((out / "dist").glob("forksafety-*.tar.gz"))
    return wheel, (tarballs[0] if tarballs else None)


def locked_requirement(name: str, lock: Path = LOCK) -> tuple[str, set[str]]:
    """``(name==version, its sha256 hashes)`` as requirements.lock pins ``name``.
    Raises RuntimeError when the lock does not pin it."""
    match = re.search(rf"^({re.escape(name)}==\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{{64}}.*\n)+)",
                      lock.read_text(), re.M | re.I)
    if match is None:
        raise RuntimeError(f"{lock} does not pin {name}")
    return match.group(1), set(re.findall(r"sha256:([0-9a-f]{64})", match.group(2)))


def cache_folder() -> Path:
    """Where downloaded wheels are kept between runs: ``$XDG_CACHE_HOME/forksafety`` (~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forksafety"


def locked_wheelhouse(names: tuple[str, ...] = ("psutil",), folder: Path | None = None) -> Path:
    """A folder of wheels of ``names`` at requirements.lock's versions, each file
    checked against the lock's sha256 hashes, for ``pip install --no-index
    --find-links FOLDER``: pip still resolves (our wheel's ``psutil>=5.9`` against
    what the folder holds) but no registry is asked and the answer is the same every
    day. Kept in ``cache_folder()/wheelhouse-locked``: a wheel is downloaded once
    (``pip download --no-deps --require-hashes --only-binary :all:``, bounded by
    STEP_TIMEOUT seconds). Raises RuntimeError when the download fails."""
    folder = folder or cache_folder() / "wheelhouse-locked"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pin, hashes = locked_requirement(name)
        version = pin.split("==", 1)[1]
        stem = re.sub(r"[-_.]+", "_", name).lower()
        if any(hashlib.sha256(w.read_bytes()).hexdigest() in hashes for w in folder.glob(f"{stem}-{version}-*.whl")):
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
            req.write(f"{pin} " + " ".join(f"--hash=sha256:{h}" for h in sorted(hashes)) + "\n")
            req.flush()
            done = subprocess.run([PY, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                                   "--only-binary", ":all:", "--dest", str(folder), "-r", req.name],
                                  capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])
            raise RuntimeError(f"pip download of the locked {pin} failed (exit {done.returncode}): {tail}")
    return folder


def _run(argv: list, log: Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd or REPO_ROOT, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT, env={**os.environ, "COLUMNS": "140", **(env or {})},
                          stdin=subprocess.DEVNULL)
    log.write_text(done.stdout + done.stderr)
    return done


def capture(out: Path, progress=print) -> None:
    """Run the tool's captures into ``out/tool``. Raises RuntimeError when a step failed."""
    from .broker import resolve_broker
    from .harness import hung_pool_child
    from .settings import load_settings

    tool = out / "tool"
    app = tool / "app"
    app.mkdir(parents=True, exist_ok=True)
    wheel, _sdist = build_dists(tool, sdist=False)
    done = _run([getattr(sys, "_base_executable", PY), "-m", "venv", tool / "venv"], tool / "venv.out")
    if done.returncode != 0:
        raise RuntimeError(f"tool capture venv failed (exit {done.returncode}); see {tool / 'venv.out'}")
    venv_py = tool / "venv" / "bin" / "python"
    clean = {"PYTHONPATH": ""}
    jobs = [
        ("install", [venv_py, "-m", "pip", "install", "--no-color", wheel], app, clean, (0,)),
        ("version", [tool / "venv" / "bin" / "forksafety", "--version"], app, clean, (0,)),
        ("check", [PY, "-m", "forksafety", "check", "-A", "celery_examples.tasks_pool_test"], REPO_ROOT, None, (1,)),
    ]
    (app / "test_app.py").write_text(TEST_PROJECT)
    jobs.append(("pytest", [PY, "-m", "pytest", "-p", "forksafety.pytest_plugin", "-p", "no:cacheprovider",
                            "--forksafety=strict", "-q", "--no-header", "-rN", "--tb=short", "test_app.py"], app,
                 # -p only: a forksafety.egg-info left in the checkout by `pip install .` would register it twice
                 {"PYTHONPATH": str(REPO_ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, (1,)))
    for label, argv, cwd, env, codes in jobs:
        done = _run(argv, tool / f"{label}.out", cwd, env)
        progress(f"  tool {label:<27} exit {done.returncode}")
        if done.returncode not in codes:
            raise RuntimeError(f"tool capture {label} exited {done.returncode}; see {tool / (label + '.out')}")
    settings = load_settings(environ={**os.environ, "CHROMA_DIR": str(tool / "chroma"), "PROVIDER": "fake",
                                      "API_KEY": ""}, env_file=tool / "none")
    broker = resolve_broker("auto", settings.redis_url)
    try:
        with hung_pool_child(broker, settings, tool / "worker") as (child, _worker):
            done = _run([PY, "-m", "forksafety", "inspect", child, "--log-dir", tool / "dumps"],
                        tool / "inspect.out", app, {"PYTHONPATH": str(REPO_ROOT)})
    finally:
        broker.cleanup()
    progress(f"  tool {'inspect':<27} exit {done.returncode}")
    if done.returncode != 1 or "DEADLOCK-PROVEN" not in done.stdout:
        raise RuntimeError(f"tool capture inspect exited {done.returncode}; see {tool / 'inspect.out'}")


def bodies(out: Path) -> dict[str, str]:
    """The README blocks from ``capture``'s files: tool-install, tool-check, tool-inspect, tool-pytest."""
    tool = out / "tool"
    install = (tool / "install.out").read_text().splitlines()
    wheel = next((tool / "dist").glob("forksafety-*.whl")).name
    b = {"tool-install": "\n".join(["$ python -m venv venv && . venv/bin/activate",
                                    f"$ pip install {wheel}        # or: pip install 'forksafety[stack]' for stacks",
                                    *[line for line in install if line.startswith("Successfully installed")],
                                    "$ forksafety --version",
                                    (tool / "version.out").read_text().strip().replace(str(tool / "venv"), "venv")])}
    # the commands as they ran in this checkout; installed, `forksafety ...` and `pytest --forksafety=...`
    check = (tool / "check.out").read_text().rstrip()
    b["tool-check"] = "$ python -m forksafety check -A celery_examples.tasks_pool_test\n" + check
    inspect = (tool / "inspect.out").read_text().rstrip()
    pid = inspect.split()[1] if inspect.startswith("pid ") else "PID"
    b["tool-inspect"] = f"$ python -m forksafety inspect {pid}\n" + inspect
    pytest_out = (tool / "pytest.out").read_text().rstrip()
    b["tool-pytest"] = "$ pytest -p forksafety.pytest_plugin --forksafety=strict -q --tb=short test_app.py\n" + pytest_out
    for name, body in b.items():
        text = body.replace(str(tool / "dumps"), "crash_dumps").replace(str(tool / "app"), "app")
        text = text.replace(f"{REPO_ROOT}/", "")  # paths as a user of the checkout sees them
        text = "\n".join(line if len(line) <= 220 else line[:219] + "…" for line in text.splitlines())
        b[name] = f"```text\n{text}\n```\n"
    return b
