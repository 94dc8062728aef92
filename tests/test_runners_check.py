"""``forksafety check`` names the runner's fix: when told (--runner NAME), and when it
can tell by itself (a Celery app; a job-queue library the target imports)."""

from __future__ import annotations

import subprocess

import pytest

from forksafety.guard import RUNNER_FIXES
from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.e2e


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "forksafety", "check", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_told_the_runner_it_names_that_fix():
    done = check("runner_examples/wsgi_app.py", "--runner", "gunicorn")
    assert done.returncode == 1, done.stderr  # UNSAFE: the store's threads
    assert "For gunicorn (--runner), fix (one of):" in done.stdout
    assert "post_fork(server, worker)" in done.stdout and "drop --preload" in done.stdout
    assert "For celery" not in done.stdout and "For huey" not in done.stdout


def test_it_tells_the_runner_from_the_imports():
    done = check("runner_examples/huey_tasks.py")
    assert done.returncode == 1, done.stderr
    assert "For huey (imported by the target), fix (one of):" in done.stdout
    assert "@huey.on_startup()" in done.stdout


def test_a_celery_app_gets_the_celery_fixes():
    done = check("-A", "celery_examples.tasks_pool_test")
    assert done.returncode == 1, done.stderr
    assert "For this Celery app, with the prefork pool, fix (one of):" in done.stdout
    assert "worker_process_init" in done.stdout


def test_every_runner_has_fixes_and_an_unknown_one_is_exit_2():
    # one entry per runner of README's table (fastapi: the report's app, whose fork is Celery's)
    assert set(RUNNER_FIXES) == {"celery", "gunicorn", "uwsgi", "huey", "rq", "dramatiq", "multiprocessing", "fastapi"}
    done = check("runner_examples/wsgi_app.py", "--runner", "nope")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid choice: 'nope'" in done.stderr


def test_a_runner_fix_for_a_thread_pool_speaks_of_it_not_of_a_store():
    # a user's module with a ThreadPoolExecutor at import, run by Huey: the fix says where to
    # create *it*, and the example file it names is found in forksafety's repository
    done = check("forksafety/cases/thread_pool.py", "--runner", "huey")
    assert done.returncode == 1, done.stderr
    fixes = done.stdout.split("For huey (--runner), fix (one of):", 1)[1]
    assert "create it in an @huey.on_startup() hook" in fixes
    assert "store" not in fixes
    assert "runner_examples/huey_tasks_startup.py in forksafety's repository" in fixes
    for name, fixes in RUNNER_FIXES.items():
        for fix in fixes:
            assert "open the store" not in fix and "store's module" not in fix, (name, fix)
            assert "examples/" not in fix or "in forksafety's repository" in fix, (name, fix)


def test_when_it_cannot_tell_the_runner_it_says_how_to_ask():
    # a module that imports no runner (a FastAPI app run by gunicorn --preload looks like this)
    done = check("forksafety/cases/thread_pool.py")
    assert done.returncode == 1, done.stderr
    assert "fix (one of):" not in done.stdout
    assert "check again with --runner NAME (celery, gunicorn, uwsgi, huey, rq, dramatiq, fastapi, multiprocessing)" \
        in done.stdout
    told = check("forksafety/cases/thread_pool.py", "--runner", "gunicorn")
    assert "--runner NAME" not in told.stdout and "For gunicorn (--runner)" in told.stdout


def test_two_different_runners_is_one_line_exit_2():
    # the fixes of one runner only were printed (the last one named), silently
    done = check("runner_examples/wsgi_app.py", "--runner", "gunicorn", "--runner", "uwsgi")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "--runner given twice (gunicorn and uwsgi): give it once" in done.stderr
    assert done.stdout == ""
