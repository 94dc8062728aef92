"""Error classes. Every error carries a help text that says what to do next.

CLIs print ``str(error)`` (cause and fix on one line) and exit with
``error.exit_code`` (2: bad usage or set-up, as in ../shared/DESIGN.md).
"""

from __future__ import annotations

import signal


class ForkSafetyError(Exception):
    """Base class: a problem the user can fix, with the fix in ``help``."""

    exit_code = 2

    def __init__(self, message: str, help: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.help = help

    def __str__(self) -> str:
        return f"{self.message}: {self.help}" if self.help else self.message


class SettingsError(ForkSafetyError):
    """The settings (.env or environment) are invalid: unknown provider, missing key..."""


class BrokerError(ForkSafetyError):
    """The broker cannot be reached or started."""


class UsageError(ForkSafetyError):
    """Bad command-line arguments."""


class PtraceError(ForkSafetyError):
    """Attaching a debugger or stack sampler to a process is not permitted."""


class ToolMissingError(ForkSafetyError):
    """A debugger or tracer the command needs is not installed."""


class TargetNotFound(ForkSafetyError):
    """The module, file or Celery app named by the user does not exist."""


class ProcessNotFoundError(ForkSafetyError):
    """The process to inspect does not exist (or has ended)."""


class ForkUnsafeError(ForkSafetyError, RuntimeError):
    """Strict mode refused a fork: the process has threads a child would lose."""

    exit_code = 1


class ForkSafetyWarning(RuntimeWarning):
    """A process with threads a forked child would lose is forking (a warning, not an error)."""


class Interrupted(BaseException):
    """Raised in the main thread on SIGINT, SIGTERM or SIGHUP so every ``finally`` runs
    (``forksafety.cli.install_interrupt_handlers``). Not an Exception: ``except
    Exception`` must not swallow it."""

    exit_code = 130  # 128 + SIGINT, as shells report it

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code_of(error: BaseException) -> int:
    """The one mapping from an exception to a CLI exit code: a ForkSafetyError's own
    ``exit_code`` (2: usage or set-up, 1: ForkUnsafeError), 130 for Interrupted and
    KeyboardInterrupt (128 + SIGINT, as shells report it), 1 for anything else."""
    if isinstance(error, (ForkSafetyError, Interrupted)):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    return 1
