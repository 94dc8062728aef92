"""README and docs cannot rot: every documented command, flag and Make target exists,
the cheap commands run, and every captured block was written by `make docs`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from forksafety import docs
from forksafety.versions import package_versions

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOC_FILES = docs.docs_files(REPO)
SCRIPTS = ["celery_examples/run_test.py", "scripts/demo_crash.py", "scripts/gdb_attach_child.py",
           "scripts/lldb_attach_child.py", "scripts/make_docs.py"]


def _help(script: str) -> str:
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_captured_blocks_were_written_by_make_docs_and_not_edited(path):
    text = path.read_text()
    assert docs.verify_text(text) == []


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_captured_blocks_use_the_one_spelling_of_success_and_the_one_variant_vocabulary(path):
    """Blocks captured before issue 12's renames said OK and the demo's old variant names;
    a stale block must fail here (run `make docs`), not mislead a reader."""
    old = re.compile(r"\bOK\b|variant inherited|demo-inherited-|`inherited`|same-dir-new-client|parent-never-opened")
    for block in docs.find_blocks(path.read_text()):
        assert not old.search(block.body), (block.name, old.search(block.body).group(0))


def test_the_analysis_docs_exist_and_carry_captures():
    for name in ("LINUX_RESULTS.md", "FIXES.md", "MACOS_RESULTS.md", "CHECK.md"):
        assert (REPO / "docs" / name).exists(), name
    linux = (REPO / "docs" / "LINUX_RESULTS.md").read_text()
    names = [b.name for b in docs.find_blocks(linux)]
    for needed in ("demo-threads", "gdb-backtrace", "gdb-futex", "strace-child", "celery-capture", "celery-matrix"):
        assert needed in names, needed
    assert "FUTEX_WAIT_BITSET_PRIVATE" in linux and "tokio-rt-worker" in linux


def test_macos_page_says_plainly_that_our_captures_are_from_linux():
    text = (REPO / "docs" / "MACOS_RESULTS.md").read_text()
    assert "This repository's own captures are all from Linux" in text
    assert not docs.find_blocks(text), "no captured block may claim to be from macOS"


def test_block_markers_name_the_versions_that_are_installed():
    installed = package_versions()
    for path in DOC_FILES:
        for block in docs.find_blocks(path.read_text()):
            for pkg in ("celery", "billiard", "chromadb"):
                match = re.search(rf"{pkg} (\S+?)[,|]", block.meta + ",")
                assert match and match.group(1) == installed[pkg], (path.name, block.name, pkg)


def test_the_hash_check_catches_a_hand_edit():
    block = docs.render("x", "real output\n", "somewhere")
    assert docs.verify_text(block) == []
    assert docs.verify_text(block.replace("real output", "nicer output"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_the_readme_shows_for_a_script_exists(script):
    helptext = _help(script)
    name = Path(script).name
    flags = set()
    for line in README.splitlines():
        if name in line or (line.startswith("| `…") and name.split(".")[0] in line):
            flags.update(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line))
    for flag in flags:
        assert flag in helptext, f"README shows {flag} for {script}, which has no such flag"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README)) - {"make"}
    block = README[README.index("Make targets:"):README.index("Exit codes of every command")]
    targets |= set(re.findall(r"`([a-z][a-z0-9-]+)`", block)) - {"native-test-<pool>", "make"}
    targets |= {f"native-test-{p}" for p in ("prefork", "threads", "solo", "gevent", "eventlet")}
    listed = subprocess.run(["make", "-qp"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    defined = set(re.findall(r"^([a-z][a-z0-9-]*):", listed, re.M))
    missing = sorted(t for t in targets if t not in defined)
    assert not missing, f"README names Make targets that do not exist: {missing}"


def test_every_path_the_readme_names_exists():
    for path in re.findall(r"`((?:celery_examples|scripts|benchmarks|tests|docs|forksafety)/[\w./-]+\.(?:py|md|sh))`", README):
        assert (REPO / path).exists(), path
    for link in re.findall(r"\]\((docs/[\w.]+)\)", README):
        assert (REPO / link).exists(), link


def test_cheap_documented_commands_run():
    for argv, code in ((["make", "help"], 0),
                       ([sys.executable, "scripts/demo_crash.py", "--list"], 0),
                       ([sys.executable, "-m", "forksafety", "--help"], 0),
                       ([sys.executable, "scripts/make_docs.py", "--check"], 0),
                       ([sys.executable, "benchmarks/matrix.py", "--help"], 0),
                       ([sys.executable, "benchmarks/startmethod.py", "--help"], 0)):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == code, (argv, done.stdout[-500:], done.stderr[-500:])


def test_check_names_the_bug_in_the_task_module(tmp_path):
    # the module opens its store in CHROMA_DIR: a private one, not the checkout's chroma_data/ (or a .env's)
    done = subprocess.run([sys.executable, "-m", "forksafety", "check", "celery_examples/tasks_pool_test.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CHROMA_DIR": str(tmp_path / "chroma")})
    assert done.returncode == 1 and "UNSAFE" in done.stdout and "tokio-rt-worker" in done.stdout
    assert (tmp_path / "chroma" / "chroma.sqlite3").exists()


def test_check_overhead_benchmark_prints_its_figure_and_leaves_no_temp_folder(tmp_path):
    """README lists benchmarks/check_overhead.py: it prints the overhead figure, and its
    scratch folder (CHROMA_DIR, case folder, pycache prefix) is gone afterwards."""
    done = subprocess.run([sys.executable, "benchmarks/check_overhead.py", "--runs", "1", "forksafety.cases.plain"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode in (0, 1), done.stderr[-500:]  # 1: over the budget on a loaded machine
    assert "overhead figure: check adds at most" in done.stdout
    assert list(tmp_path.iterdir()) == []
