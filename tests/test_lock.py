"""requirements.lock is a closed set: it installs with --no-deps into a stock venv and lacks nothing.

Installed as ``make install`` and the Dockerfile do (``pip install --no-deps --require-hashes``,
then ``pip check``), no resolver looks past the locked versions, so an upstream release cannot
break the install. These tests fail for a lock that only installs through pip's resolver: one
that misses a dependency, or a package an extra needs (chromadb asks for ``uvicorn[standard]``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK_LOCK = REPO / "scripts" / "check_lock.py"
LOCK = REPO / "requirements.lock"


def check_lock(*args: str, python: str = sys.executable, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(CHECK_LOCK), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def lock_blocks(text: str) -> dict[str, str]:
    """Each locked package's block (its pin line, hash lines and 'via' comments)."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            name = match.group(1).lower()
            blocks[name] = line
        elif name and line.startswith(" "):
            blocks[name] += line
        else:
            name = None
    return blocks


def test_every_pin_is_exact_and_hashed_with_no_index_or_url() -> None:
    text = LOCK.read_text()
    blocks = lock_blocks(text)
    assert len(blocks) > 100
    for name, block in blocks.items():
        assert "--hash=sha256:" in block, name
    assert not re.search(r"https?://|--index-url|--extra-index-url|--find-links", text)


@pytest.mark.e2e
def test_lock_installs_with_no_deps_into_a_stock_venv_and_is_closed() -> None:
    """The real proof: fresh ``python3 -m venv`` with its bundled pip, --no-deps, pip check, imports."""
    python = shutil.which("python3") or sys.executable
    done = check_lock("--python", python, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "requirements.lock is a closed set" in done.stderr
    assert "with --no-deps" in done.stderr


@pytest.mark.e2e
def test_a_lock_missing_a_package_an_extra_needs_is_caught(tmp_path: Path) -> None:
    """pip check does not look at extras; the closure check does (uvicorn[standard] -> httptools)."""
    blocks = lock_blocks(LOCK.read_text())
    assert "httptools" in blocks
    without = tmp_path / "requirements.lock"
    without.write_text("".join(block for name, block in blocks.items() if name != "httptools"))
    done = check_lock("--installed", "--lock", str(without), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "httptools is not in the lock: uvicorn[standard] (wanted by chromadb) requires httptools" in done.stdout
    assert "is not a closed set (1 problem(s)); regenerate it with make lock" in done.stderr


@pytest.mark.e2e
def test_a_lock_missing_a_plain_dependency_fails_pip_check(tmp_path: Path) -> None:
    """Installed with --no-deps, a lock that lacks celery's billiard fails loudly at pip check."""
    blocks = lock_blocks(LOCK.read_text())
    partial = tmp_path / "partial.lock"
    partial.write_text(blocks["celery"])
    python = shutil.which("python3") or sys.executable
    done = check_lock("--python", python, "--lock", str(partial), timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^pip check: celery 5\.7\.0 requires billiard", done.stdout, re.M), done.stdout


def test_a_missing_lock_is_a_one_line_usage_error(tmp_path: Path) -> None:
    done = check_lock("--installed", "--lock", str(tmp_path / "nope.lock"))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the lock" in lines[0] and "--lock" in lines[0], done.stderr
