"""Helpers every CLI shares: one-line argparse errors, error printing, signal handling."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn

from .errors import ForkSafetyError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class Interrupted(BaseException):
    """Raised in the main thread on SIGINT or SIGTERM so every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def install_interrupt_handlers() -> None:
    """Turn the first SIGINT or SIGTERM into ``Interrupted`` in the main thread.

    Later ones are ignored, so a second Ctrl-C cannot cut the clean-up short
    (every wait in the clean-up is bounded).
    """

    def handler(signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, how to see usage) and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def fail(error: ForkSafetyError | str, code: int = EXIT_USAGE, prog: str = "") -> int:
    """Print ``error`` as one line on stderr and return ``code``."""
    prefix = f"{prog}: " if prog else ""
    sys.stderr.write(f"{prefix}error: {error}\n")
    return code


def positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def int_range(high: int | None = None):
    """argparse type factory: an integer >= 1 (and <= ``high`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {high}")
        return value

    return parse


positive_int = int_range()  # argparse type: an integer >= 1


def path_arg(text: str) -> Path:
    """argparse type: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not allowed: give a folder or file name")
    return Path(text)
