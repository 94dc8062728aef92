"""Outcomes, the verdict record, and the outcome expected per platform.

Expected outcomes are what this repository *measured* with the pinned versions
(Linux x86_64, see docs/), and what the original report describes for macOS
(the pool child dies with SIGTRAP raised by libdispatch).
"""

from __future__ import annotations

import enum
import sys
from dataclasses import asdict, dataclass, field


class Outcome(str, enum.Enum):
    """What happened to the work.

    PASS: the task returned what it added. OK: a forked child (demo, probe) exited 0.
    HANG: it never finished (by a hang rule or the deadline).
    CRASH: the process died by a signal. ERROR: the task raised, or the set-up failed.
    """

    PASS = "PASS"
    OK = "OK"
    HANG = "HANG"
    CRASH = "CRASH"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


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
# macOS: NOT measured by this repository (no macOS machine). module-level is
# what the original report shows (the child dies with SIGTRAP raised by
# libdispatch); lazy-in-task is assumed to share its fate for the reason above.
_DARWIN = {
    ("prefork", "module-level"): Expected(Outcome.CRASH, "SIGTRAP"),
    ("prefork", "lazy-in-task"): Expected(Outcome.CRASH, "SIGTRAP"),
}


def expected_outcome(pool: str, variant: str = "module-level", platform: str | None = None) -> Expected:
    """The outcome we expect for ``pool`` / ``variant`` on ``platform`` (default: this one)."""
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
        """``HANG (deadlock-proven)``, ``CRASH SIGTRAP``, ``OK``..."""
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

    SECONDS_DIGITS = 2

    @property
    def scenario(self) -> str:
        """``pool`` for the bug as reported, ``pool/variant`` otherwise."""
        return self.pool if self.variant == "module-level" else f"{self.pool}/{self.variant}"
