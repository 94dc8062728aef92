"""Outcomes, the verdict record, and the outcome expected per start method and platform.

Expected outcomes are what this repository *measured* with the pinned versions
(Linux x86_64, see docs/), and what the original report describes for macOS
(a *forked* pool child dies with SIGTRAP raised by libdispatch). Which start
method applies is read from the pool child itself (forksafety/poolstart.py),
never assumed from the platform: billiard >= 4.3 spawns on macOS by default.
"""

from __future__ import annotations

import enum
import signal
import sys
from dataclasses import asdict, dataclass, field


class Outcome(str, enum.Enum):
    """What happened to the work.

    PASS: the work finished: the task returned what it added, or a forked child (demo,
    probe, lab case) exited 0. HANG: it never finished (by a hang rule or the deadline).
    CRASH: the process died by a signal. ERROR: the task raised, or the set-up failed.

    Success has one spelling, ``PASS``, in every product. ``OK`` (the demo's and the
    checker's spelling before 2026-12) is kept as an alias: ``Outcome.PASS is Outcome.PASS``,
    and ``Outcome("OK")`` reads an old JSON file's value as PASS.
    """

    PASS = "PASS"
    OK = "PASS"  # alias of PASS (same value), for code written against the old spelling
    HANG = "HANG"
    CRASH = "CRASH"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> "Outcome | None":
        """``Outcome("OK")``: the old spelling of PASS (see the class docstring)."""
        return cls.PASS if value == "OK" else None


@dataclass(frozen=True)
class Expected:
    """An expected outcome, with the signal name for CRASH (e.g. SIGTRAP)."""

    outcome: Outcome
    signal: str | None = None

    def __str__(self) -> str:
        return f"{self.outcome.value} {self.signal}" if self.signal else self.outcome.value

    def matches(self, outcome: Outcome, signal: str | None) -> bool:
        """True when ``outcome`` (and, for CRASH with a named signal, ``signal``) match."""
        return outcome == self.outcome and (self.signal is None or self.signal == signal)


def signal_of_returncode(returncode: int | None) -> str | None:
    """``"SIGKILL"`` & co for a process that a signal ended (subprocess/os.waitstatus_to_exitcode:
    a negative return code is minus the signal's number), else None (exited, or still running)."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def current_platform() -> str:
    """``linux``, ``darwin`` or another ``sys.platform`` value."""
    return "darwin" if sys.platform == "darwin" else ("linux" if sys.platform.startswith("linux") else sys.platform)


# (pool, variant) -> expected outcome, per platform; anything not listed: PASS.
# Variants other than module-level exist for prefork only.
# Linux: measured here (celery 5.7.0, billiard 4.3.2, chromadb 1.5.9, x86_64):
#   lazy-in-task hangs like module-level, because chromadb caches one client
#   system per persist_directory, so the "new" store reuses the parent's.
_LINUX = {
    ("prefork", "module-level"): Expected(Outcome.HANG),
    ("prefork", "lazy-in-task"): Expected(Outcome.HANG),
}
# macOS, for a FORKED child: NOT measured by this repository (no macOS machine).
# module-level is what the original report shows (billiard 4.2.3 forked; the
# child dies with SIGTRAP raised by libdispatch); lazy-in-task is assumed to share
# its fate for the reason above. billiard >= 4.3 spawns on macOS by default: PASS.
_DARWIN = {
    ("prefork", "module-level"): Expected(Outcome.CRASH, "SIGTRAP"),
    ("prefork", "lazy-in-task"): Expected(Outcome.CRASH, "SIGTRAP"),
}


# Start methods whose pool child does not inherit the worker's store: the child is a
# fresh interpreter (spawn) or forked from billiard's clean fork server (forkserver),
# and creates the module-level store again, with its own threads.
FRESH_START_METHODS = ("spawn", "forkserver")


def expected_outcome(pool: str, variant: str = "module-level", platform: str | None = None,
                     start_method: str | None = "fork") -> Expected:
    """The outcome we expect for ``pool`` / ``variant`` on ``platform`` (default: this one),
    given the ``start_method`` the prefork pool child really used (``fork``, ``spawn``,
    ``forkserver``; read from the child, see forksafety/poolstart.py).

    Only a forked child inherits the store: HANG on Linux, CRASH SIGTRAP on macOS.
    A spawned or forkserver child: PASS. The ``spawn``/``forkserver`` variants whose
    child was nevertheless forked (a Celery that ignored the setting) expect what
    module-level expects.
    """
    if pool == "prefork" and start_method in FRESH_START_METHODS:
        return Expected(Outcome.PASS)
    if variant in FRESH_START_METHODS:
        variant = "module-level"
    table = _DARWIN if (platform or current_platform()) == "darwin" else _LINUX
    return table.get((pool, variant), Expected(Outcome.PASS))


def outcome_text(outcome: Outcome | str | None, signal: str | None = None, rule: str | None = None) -> str:
    """The one spelling of an outcome for people: ``HANG (deadlock-proven)``, ``CRASH SIGTRAP``,
    ``PASS``; ``NO RESULT`` when nothing ran (``outcome`` None)."""
    if outcome is None:
        return "NO RESULT"
    text = str(outcome) + (f" {signal}" if signal else "")
    return text + (f" ({rule})" if rule else "")


class Record:
    """Base of every outcome record (``Verdict``, ``demo.DemoRecord``, ``checkrun.ProbeResult``,
    ``lab.CaseRun``): dataclasses with ``outcome`` (an Outcome), ``signal`` (for CRASH),
    ``rule`` (for HANG) and ``detail``; those with ``expected`` (an Expected) also get
    ``matched``. The outcome text and the JSON shape are built here, once."""

    def outcome_text(self) -> str:
        """``HANG (deadlock-proven)``, ``CRASH SIGTRAP``, ``PASS``..."""
        return outcome_text(self.outcome, self.signal, self.rule)

    @property
    def matched(self) -> bool:
        """True when the outcome is the expected one."""
        return self.expected.matches(self.outcome, self.signal)

    def to_dict(self) -> dict:
        """JSON-ready dict (outcome and expected as strings, ``matched`` included when
        there is an expectation; ``seconds`` rounded to ``SECONDS_DIGITS``, ``verdict_seconds``
        to ms)."""
        data = asdict(self)
        data["outcome"] = self.outcome.value if self.outcome is not None else None
        if hasattr(self, "expected"):
            data["expected"] = str(self.expected)
            data["matched"] = self.matched
        data["seconds"] = round(self.seconds, self.SECONDS_DIGITS)
        if data.get("verdict_seconds") is not None:
            data["verdict_seconds"] = round(data["verdict_seconds"], 3)
        return data

    SECONDS_DIGITS = 3


@dataclass
class Verdict(Record):
    """The record of one scenario: the one source of truth for tables, JSON and docs.

    seconds: wall time of the scenario, worker start to worker stopped.
    verdict_seconds: from the task reaching the pool child (STARTED seen) to the verdict.
    rule: for HANG, the rule that decided it (deadlock-proven, stalled, deadline).
    start_method: how the pool child was started (fork, spawn, forkserver), as the
      child itself reported it; "no pool child" for the non-prefork pools.
    """

    pool: str
    variant: str
    outcome: Outcome
    expected: Expected
    seconds: float
    detail: str = ""
    signal: str | None = None
    rule: str | None = None
    child_pid: int | None = None
    verdict_seconds: float | None = None
    worker_log: str | None = None
    evidence: dict | None = None
    extra: dict = field(default_factory=dict)
    start_method: str | None = None

    SECONDS_DIGITS = 2

    @property
    def scenario(self) -> str:
        """``pool`` for the bug as reported, ``pool/variant`` otherwise."""
        return self.pool if self.variant == "module-level" else f"{self.pool}/{self.variant}"
