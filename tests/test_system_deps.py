"""scripts/system_deps.sh: README's test command installs what the tests need, or says how in one line."""

from __future__ import annotations

import os
import shutil
import tempfile
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "system_deps.sh"
PROGRAMS = ["redis-server", "gdb", "lldb", "strace", "lsof", "ps"]


def test_nothing_is_done_or_printed_when_every_program_is_there() -> None:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.fail(f"make check should have installed {missing} before the tests ran")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_a_user_without_root_or_sudo_gets_the_apt_get_line() -> None:
    """As nobody, on a PATH with only the shell's helpers, every program is missing and sudo is absent."""
    with tempfile.TemporaryDirectory(prefix="forksafety-sysdeps-") as tmp:  # pytest's tmp_path is 0700
        os.chmod(tmp, 0o755)
        bin_dir = Path(tmp)
        done = _run_as_nobody(bin_dir)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "system_deps: the tests need redis-server gdb lldb strace lsof procps: run "
        "'sudo apt-get install -y redis-server gdb lldb strace lsof procps', then rerun make check"]


def _run_as_nobody(bin_dir: Path) -> subprocess.CompletedProcess:
    for tool in ("bash", "id", "env", "timeout", "mktemp", "grep", "tail", "rm", "apt-get"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return subprocess.run([shutil.which("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           str(bin_dir / "bash"), str(SCRIPT)],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)
