"""pytest plugin: every fork during the test session, in a process with threads a child
would lose, becomes a warning (``--forksafety``) or a test failure (``--forksafety=strict``).

Registered through the ``pytest11`` entry point (pyproject), so an installed forksafety
offers the option in every pytest run; without the option the plugin only adds it to
``--help``: it imports nothing else, installs no hook, and costs nothing per test or fork.

With the option it installs ``forksafety.guard`` (the guard's at-fork handler,
``os.register_at_fork``, and in strict mode its ``os.fork`` that refuses the fork):
``os.fork``, multiprocessing's ``fork`` context and billiard's (Celery's) ``fork`` all
call ``os.fork`` (Lib/multiprocessing/popen_fork.py, billiard/popen_fork.py). The
message is the guard's: the threads, their origin and the fix, preceded by the test
that forked (``fork() in test tests/test_x.py::test_y``).

* warn: a ``ForkSafetyWarning`` per fork, in pytest's warnings summary under the test.
* strict: ``os.fork()`` raises ``ForkUnsafeError`` in the test, which fails with the message.

Without a pytest11 entry point (a checkout): ``pytest -p forksafety.pytest_plugin --forksafety``.
"""

from __future__ import annotations

MODES = ("warn", "strict")


def pytest_addoption(parser) -> None:
    """Add ``--forksafety[=warn|strict]``."""
    group = parser.getgroup("forksafety", "fork safety (forksafety)")
    group.addoption("--forksafety", nargs="?", const="warn", default=None, choices=MODES, metavar="MODE",
                    help="warn (default when given) or strict: every fork() in a process with threads a child "
                         "would lose becomes a warning or a test failure naming the threads, their origin and "
                         "the test that forked")


def pytest_configure(config) -> None:
    """With ``--forksafety``: install the guard and the hook that names the running test."""
    mode = config.getoption("forksafety", None)
    if not mode:
        return
    from . import guard  # only now: without the option nothing of forksafety's core is imported

    watch = _ForkWatch()
    config.pluginmanager.register(watch, "forksafety-fork-watch")
    guard.install(mode, context=watch.where)
    config.add_cleanup(guard.uninstall)


class _ForkWatch:
    """Knows which test runs, so the guard's message can name it."""

    def __init__(self) -> None:
        self.nodeid: str | None = None

    def where(self) -> str:
        """``test <nodeid>``, or "" outside a test (collection, session fixtures)."""
        return f"test {self.nodeid}" if self.nodeid else ""

    def pytest_runtest_setup(self, item) -> None:
        self.nodeid = item.nodeid

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.nodeid = None

    def pytest_report_header(self, config) -> str:
        return f"forksafety: {config.getoption('forksafety')} (every fork() with threads a child would lose)"
