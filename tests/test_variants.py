"""One vocabulary of --variant names (issue 12): each product runs exactly the names the
vocabulary gives it, older demo names resolve, and a name one product does not run is a
one-line error with exit 2 that names the product that does."""

import subprocess
import sys

import pytest

from forksafety import demo, harness
from forksafety.errors import UsageError
from forksafety.settings import REPO_ROOT
from forksafety.variants import ALIASES, CELERY, DEMO, VOCABULARY, resolve_variant, variant_names


def test_each_product_runs_the_names_the_vocabulary_gives_it():
    assert list(harness.VARIANTS) == variant_names(CELERY)
    assert list(demo.VARIANTS) == variant_names(DEMO)
    shared = set(harness.VARIANTS) & set(demo.VARIANTS)
    assert shared == {"module-level", "lazy", "lazy-in-task"}


def test_no_name_is_also_an_alias():
    assert not set(ALIASES) & set(VOCABULARY)


@pytest.mark.parametrize("old,new", [("inherited", "module-level"), ("parent-never-opened", "lazy"),
                                     ("same-dir-new-client", "lazy-in-task")])
def test_old_demo_names_resolve(old, new):
    assert resolve_variant(old, DEMO) == new
    assert demo.get_variant(old).name == new
    assert demo.expected_demo_outcome(old, "linux") == demo.expected_demo_outcome(new, "linux")


def test_a_name_the_product_does_not_run_names_the_one_that_does():
    with pytest.raises(UsageError, match=r"'spawn' is run by the Celery matrix .*not by the fork demo"):
        resolve_variant("spawn", DEMO)
    with pytest.raises(UsageError, match=r"'other-dir' is run by the fork demo .*not by the Celery matrix"):
        harness.make_scenario("prefork", "other-dir")
    with pytest.raises(UsageError, match="unknown variant 'nope'"):
        resolve_variant("nope", CELERY)


@pytest.mark.parametrize("script,args,message", [
    ("demo_crash.py", ["--variant", "spawn"], "'spawn' is run by the Celery matrix"),
    ("run_test.py", ["--variant", "close-before-fork"], "'close-before-fork' is run by the fork demo"),
    ("run_test.py", ["--variant", "nope"], "unknown variant 'nope'"),
])
def test_cli_error_is_one_line_exit_2(script, args, message):
    path = REPO_ROOT / ("celery_examples" if script == "run_test.py" else "scripts") / script
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
