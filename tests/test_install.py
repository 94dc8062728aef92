"""The tool as users install it: a wheel and an sdist built from this checkout with
``python -m build --no-isolation`` (the build tooling of requirements.lock), installed
with pip into venvs that are not the harness's.

* a fresh venv (none of the harness's dependencies): ``forksafety --version``,
  ``check`` on a module-level ThreadPoolExecutor says UNSAFE and its ``--probe``
  says HANG, evidence lands in the current folder, importing forksafety starts
  no thread, the pytest11 entry point is registered, and a pid of root's is
  refused to user nobody with one line and exit 2;
* a venv that already holds other versions of celery and chromadb than the
  harness's: installing the wheel changes none of them, and ``check -A`` works there.

Real pip installs, made deterministic: pip resolves our wheel's ``psutil>=5.9`` against
a local wheelhouse holding the locked, hash-checked psutil (``--no-index --find-links``),
and the other celery and chromadb come from a wheelhouse downloaded once and kept in
~/.cache/forksafety (skipped, saying so, when that first download cannot reach the
registry). Every subprocess is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from forksafety.docs_tool import build_dists, cache_folder, lock_deadlocked_child, locked_wheelhouse

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")]

PIP_TIMEOUT = 600  # seconds a pip download may take (the first run fills the wheelhouse)
INSTALL_TIMEOUT = 180  # seconds a pip install from a local wheelhouse may take
UNREACHABLE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
               "Could not fetch URL", "Max retries exceeded", "No route to host", "timed out")
OTHER_CELERY, OTHER_CHROMADB = "5.6.3", "1.3.4"  # the harness locks celery 5.7.0, chromadb 1.5.9

TASKS = '''
from concurrent.futures import ThreadPoolExecutor

pool = ThreadPoolExecutor(max_workers=2)
pool.submit(int).result()  # the pool's first worker thread starts now, at import


def work():
    return pool.submit(sum, [1, 2, 3]).result()
'''

CELERY_PROJ = '''
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

app = Celery("proj", broker="memory://")
pool = ThreadPoolExecutor(max_workers=1)
pool.submit(int).result()


@app.task
def add(x, y):
    return x + y
'''


def run(cmd: list, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``cmd`` as a user of the installed tool would: outside this checkout (by default in the
    temporary folder), with no PYTHONPATH, so only what pip installed can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd or tempfile.gettempdir(), env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def base_python() -> str:
    """A Python >= 3.11 every user can run (the system's, when it is new enough), else ours."""
    system = Path("/usr/bin/python3")
    if system.exists():
        probe = run([system, "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"], timeout=30)
        if probe.stdout.strip() == "True":
            return str(system)
    return getattr(sys, "_base_executable", sys.executable)


def make_venv(folder: Path) -> Path:
    out = run([base_python(), "-m", "venv", folder], timeout=120)
    assert out.returncode == 0, out.stderr
    return folder / "bin" / "python"


def versions(python: Path) -> dict[str, str]:
    out = run([python, "-m", "pip", "list", "--format", "json"], timeout=60)
    assert out.returncode == 0, out.stderr
    return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}


@pytest.fixture(scope="session")
def world():
    """A folder every user can enter (pytest's own tmp folders are root-only), removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="forksafety-install-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dists(world) -> tuple[Path, Path]:
    """(wheel, sdist) built by ``python -m build --no-isolation`` from a copy of the checkout's package files."""
    wheel, sdist = build_dists(world)
    return wheel, sdist


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """The locked, hash-checked psutil wheel (forksafety.docs_tool.locked_wheelhouse)."""
    try:
        return locked_wheelhouse()
    except RuntimeError as exc:
        if any(word in str(exc) for word in UNREACHABLE):
            pytest.skip(f"the package registry is unreachable and the locked psutil wheel is not cached yet: {exc}")
        raise


def install(python: Path, *args, find_links: list[Path]) -> subprocess.CompletedProcess:
    """``pip install --no-index --find-links ...``: pip resolves for real, against local wheels only."""
    links = [arg for folder in find_links for arg in ("--find-links", folder)]
    return run([python, "-m", "pip", "install", "--quiet", "--no-index", *links, *args], timeout=INSTALL_TIMEOUT)


@pytest.fixture(scope="session")
def fresh(world, dists, wheelhouse) -> Path:
    """A fresh venv with only the wheel and what it requires (psutil, resolved from the wheelhouse)."""
    python = make_venv(world / "fresh")
    out = install(python, dists[0], find_links=[wheelhouse])
    assert out.returncode == 0, out.stderr
    return python


def other_versions_wheelhouse(python: Path) -> Path:
    """Wheels of celery OTHER_CELERY (with its dependencies) and chromadb OTHER_CHROMADB (alone:
    what matters is what our install changes, not chromadb's ~60 dependencies), downloaded once by
    ``python``'s pip into ~/.cache/forksafety and reused (a stamp file marks a complete download).
    Skips the test, saying so, when the registry cannot be reached for that first download."""
    folder = cache_folder() / f"wheelhouse-celery{OTHER_CELERY}-chromadb{OTHER_CHROMADB}"
    stamp = folder / "complete"
    if stamp.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for args in (["celery==" + OTHER_CELERY], ["--no-deps", "chromadb==" + OTHER_CHROMADB]):
        try:
            out = run([python, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "--dest", folder, *args],
                      timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.skip(f"downloading {args[-1]} took over {PIP_TIMEOUT} s: the registry is unreachable or slow")
        if out.returncode != 0 and any(word in out.stderr for word in UNREACHABLE):
            pytest.skip(f"the package registry is unreachable to download {args[-1]}: "
                        f"{out.stderr.strip().splitlines()[-1]}")
        assert out.returncode == 0, out.stderr
    stamp.write_text(f"celery=={OTHER_CELERY} chromadb=={OTHER_CHROMADB}\n")
    return folder


def test_wheel_and_sdist_hold_the_package_and_its_data(dists):
    wheel, sdist = dists
    names = zipfile.ZipFile(wheel).namelist()
    assert "forksafety/threadorigins.json" in names and "forksafety/cli_inspect.py" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: psutil>=5.9"]
    assert any("py-spy" in r and 'extra == "stack"' in r for r in requires)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "forksafety = forksafety.__main__:main" in entry_points and "[pytest11]" in entry_points
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("forksafety/threadorigins.json") for n in tar.getnames())


def test_fresh_venv_holds_only_the_tool_and_psutil(fresh):
    installed = set(versions(fresh)) - {"pip", "setuptools", "wheel"}
    assert installed == {"forksafety", "psutil"}


def test_version_and_help_of_the_console_script(fresh):
    script = fresh.parent / "forksafety"
    out = run([script, "--version"])
    assert out.returncode == 0 and out.stdout.startswith("forksafety 0.1.0 (Python 3.")
    out = run([script, "--help"])
    assert out.returncode == 0 and all(c in out.stdout for c in ("check", "lab", "inspect"))
    out = run([script])
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "forksafety: error: choose a command: check, lab or inspect (see forksafety --help)"]
    out = run([fresh, "-m", "forksafety", "--version"])
    assert out.returncode == 0 and out.stdout.startswith("forksafety 0.1.0")


def test_importing_forksafety_starts_no_thread_and_registers_the_pytest_plugin(fresh):
    code = ("import os, threading, sys, importlib.metadata as md\n"
            "import forksafety; assert forksafety.__file__.startswith(sys.prefix), forksafety.__file__\n"
            "import forksafety, forksafety.guard, forksafety.diagnose, forksafety.cli_inspect, forksafety.cli_check\n"
            "import forksafety.pytest_plugin\n"
            "print(threading.active_count(), len(os.listdir('/proc/self/task')),\n"
            "      sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'chromadb', 'billiard', 'rich', 'dotenv')),\n"
            "      [e.value for e in md.entry_points(group='pytest11') if e.name == 'forksafety'])\n")
    out = run([fresh, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 1 [] ['forksafety.pytest_plugin']"


def test_check_and_probe_on_a_module_level_thread_pool(fresh, tmp_path):
    (tmp_path / "tasks.py").write_text(TASKS)
    script = fresh.parent / "forksafety"
    out = run([script, "check", "tasks"], cwd=tmp_path, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Verdict: UNSAFE" in out.stdout and "ThreadPoolExecutor worker" in out.stdout
    out = run([script, "check", "tasks", "--probe", "work", "--probe-timeout", "10"], cwd=tmp_path, timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Probe: work() in a forked child: HANG (deadlock-proven)" in out.stdout
    # no py-spy / pystack here: the capture file says so, and it lies in the current folder
    (dump,) = (tmp_path / "crash_dumps").glob("check_tasks_*.log")
    text = dump.read_text()
    assert "py-spy is not installed" in text and "lost in the fork: python" in text
    site = run([fresh, "-c", "import forksafety, os; print(os.path.dirname(forksafety.__file__))"]).stdout.strip()
    assert not (Path(site) / "crash_dumps").exists() and not (Path(site).parent / "crash_dumps").exists()


def test_inspect_without_py_spy_or_pystack_says_what_it_skipped(fresh, tmp_path):
    if shutil.which("py-spy") or shutil.which("pystack"):
        pytest.skip("py-spy or pystack is on PATH here")
    with lock_deadlocked_child(fresh) as child:
        out = run([fresh.parent / "forksafety", "inspect", child], cwd=tmp_path, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "DEADLOCK-PROVEN" in out.stdout and "lost in the fork: python" in out.stdout
    assert "stacks: py-spy: skipped: not installed: pip install 'forksafety[stack]'" in out.stdout
    assert "stacks: pystack: skipped: not installed: pip install 'forksafety[stack]'" in out.stdout
    assert list((tmp_path / "crash_dumps").glob(f"inspect_pid{child}_*.log"))


def test_inspect_refuses_a_process_user_nobody_may_not_trace(fresh, world):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as user nobody")
    if str(fresh).startswith("/root"):
        pytest.skip("the venv's base Python is not readable by nobody")
    out_dir = world / "nobody"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    target = subprocess.Popen(["sleep", "60"])
    try:
        out = run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                   fresh.parent / "forksafety", "inspect", target.pid], cwd=out_dir, timeout=60)
    finally:
        target.kill()
        target.wait(timeout=10)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
    assert f"you may not trace pid {target.pid} (sleep, user root)" in out.stderr
    assert "sudo forksafety inspect PID" in out.stderr


def test_install_into_an_app_with_other_celery_and_chromadb_changes_nothing(world, dists, wheelhouse, tmp_path):
    python = make_venv(world / "app")
    others = other_versions_wheelhouse(python)
    for args in (["celery==" + OTHER_CELERY], ["--no-deps", "chromadb==" + OTHER_CHROMADB]):
        out = install(python, *args, find_links=[others])
        assert out.returncode == 0, out.stderr
    before = versions(python)
    assert before["celery"] == OTHER_CELERY and before["chromadb"] == OTHER_CHROMADB
    out = install(python, dists[0], find_links=[wheelhouse, others])
    assert out.returncode == 0, out.stderr
    after = versions(python)
    assert {name: after.get(name) for name in before} == before
    assert set(after) - set(before) <= {"forksafety", "psutil"}
    (tmp_path / "proj.py").write_text(CELERY_PROJ)
    out = run([python.parent / "forksafety", "check", "-A", "proj"], cwd=tmp_path, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Verdict: UNSAFE" in out.stdout and "ThreadPoolExecutor worker" in out.stdout
