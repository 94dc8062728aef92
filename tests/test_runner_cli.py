"""Bad input to the runner: one clear line on stderr, exit code 2, promptly, no traceback."""

from __future__ import annotations

import time

import pytest

from tests.conftest import free_port, run_cli


def _closed_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def blocked_dir(tmp_path):
    """A path that cannot be a folder (its parent is a regular file), even for root."""
    file = tmp_path / "a-file"
    file.write_text("x")
    return file / "chroma"


CASES = {
    "no-selection": ([], {}, "choose --all, or --pool NAME"),
    "unknown-pool": (["--pool", "forkpool"], {}, "argument --pool: invalid choice: 'forkpool'"),
    "negative-timeout": (["--all", "--timeout", "-1"], {}, "must be a positive number of seconds"),
    "text-timeout": (["--all", "--timeout", "soon"], {}, "is not a number of seconds"),
    "zero-concurrency": (["--all", "--concurrency", "0"], {}, "must be 1 or more"),
    "unknown-variant": (["--variant", "lazier"], {}, "argument --variant: unknown variant 'lazier': use one of module-level"),
    "unknown-broker": (["--all", "--broker", "rabbit"], {}, "argument --broker: invalid choice"),
    "unknown-provider": (["--all"], {"PROVIDER": "cohere"}, "unknown PROVIDER 'cohere'"),
    "missing-key": (["--all"], {"PROVIDER": "openai", "API_KEY": ""}, "PROVIDER=openai needs an API key"),
    "huge-concurrency": (["--all", "--concurrency", "100000"], {}, "--concurrency 100000 is more than 64"),
    "empty-json": (["--pool", "solo", "--json", ""], {}, "argument --json: an empty path is not allowed"),
    "empty-log-dir": (["--pool", "solo", "--log-dir", ""], {}, "argument --log-dir: an empty path is not allowed"),
    "bad-collection": (["--pool", "solo"], {"COLLECTION_NAME": "x"}, "not a valid Chroma collection name"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name):
    args, env, needle = CASES[name]
    t0 = time.monotonic()
    done = run_cli(args, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert time.monotonic() - t0 < 15


def test_unwritable_chroma_dir(blocked_dir):
    done = run_cli(["--pool", "threads"], env={"CHROMA_DIR": str(blocked_dir)}, timeout=60)
    assert done.returncode == 2
    assert f"chroma folder {blocked_dir} is not writable" in done.stderr
    assert "CHROMA_DIR" in done.stderr and "Traceback" not in done.stderr


def test_chroma_dir_that_is_a_file(tmp_path):
    """CHROMA_DIR naming an existing file: said as such (not 'not writable (File exists)')."""
    file = tmp_path / "a-file"
    file.write_text("keep me")
    done = run_cli(["--pool", "threads"], env={"CHROMA_DIR": str(file)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"run_test.py: error: chroma folder {file} is a file, not a folder: "
                                   "set CHROMA_DIR to a writable folder in .env or the environment")
    assert file.read_text() == "keep me"


def test_unwritable_json_path(blocked_dir):
    done = run_cli(["--pool", "threads", "--json", str(blocked_dir / "r.json")], timeout=60)
    assert done.returncode == 2 and "--json folder" in done.stderr


def test_unreachable_redis_fails_within_5_seconds_with_the_url_and_the_fix():
    url = _closed_redis()
    t0 = time.monotonic()
    done = run_cli(["--pool", "threads", "--broker", "redis"], env={"REDIS_URL": url}, timeout=60)
    elapsed = time.monotonic() - t0
    assert done.returncode == 2
    assert url in done.stderr and "is not reachable" in done.stderr and "redis-server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    # 5 s for the broker check, plus the interpreter's own start-up
    assert elapsed < 5 + 5, elapsed


def test_help_lists_pools_and_variants():
    done = run_cli(["--help"], timeout=60)
    assert done.returncode == 0
    for word in ("prefork", "threads", "solo", "gevent", "eventlet", "worker-process-init", "lazy-in-task",
                 "spawn", "forkserver", "--parallel", "--stall"):
        assert word in done.stdout


@pytest.mark.parametrize("script", ["celery_examples/run_test.py", "scripts/run_runners.py", "scripts/demo_crash.py"])
def test_output_closed_by_its_reader_is_141_with_one_line_not_a_silent_1(script, tmp_path):
    """`run_test.py --all | head -1`: the reader goes away. Exit 1 would claim an outcome did
    not match; the run stops with 141 (as a shell reports SIGPIPE) and says why on stderr."""
    import os
    import subprocess

    from tests.conftest import PYTHON, REPO

    args = {"celery_examples/run_test.py": ["--pool", "threads"], "scripts/run_runners.py": ["--runner", "dramatiq"],
            "scripts/demo_crash.py": ["--no-stacks"]}[script]
    env = {**os.environ, "CHROMA_DIR": str(tmp_path / "chroma")}
    proc = subprocess.Popen([PYTHON, script, *args, "--log-dir", str(tmp_path / "logs")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line
    try:
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    assert code == 141, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the output was closed" in lines[0] and "Traceback" not in err


def test_a_temporary_folder_left_by_a_killed_run_is_removed_and_named(tmp_path):
    from tests.demo_helpers import dead_pid

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / f"forksafety-run-{dead_pid()}-solo-x1"
    stale.mkdir()
    done = run_cli(["--pool", "solo", "--broker", "filesystem", "--log-dir", str(tmp_path / "logs")],
                   env={"TMPDIR": str(tmp), "CHROMA_DIR": str(tmp_path / "chroma")}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed 1 temporary folder(s) left by killed runs: {stale}" in done.stdout
    assert not stale.exists()
