"""The lab: the checker proven against reality, on the case corpus
(``forksafety/cases``).

For each case, one fresh interpreter (``forksafety.check.run_check``) imports the
case module, runs the check on it (the *verdict*), forks, and calls the case's
``use()`` in the child with a bounded wait (the *observed outcome*: PASS, HANG,
CRASH <signal>, ERROR). A case is *right* when the observed outcome is the
measured one and the verdict is the expected one: UNSAFE or RISK for every case
that hangs or crashes, SAFE for every control. ``agreement`` gives the figure
(cases right / cases).

Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cases import CASE_DIR_ENV, CASES, Case, get_case
from .check import PACKAGE_ROOT, CheckRequest, CheckRun, run_check
from .errors import UsageError
from .outcome import Outcome, Record, outcome_text
from .watch import make_temp_dir


@dataclass
class LabOptions:
    """Bounds for the lab. All durations are seconds.

    timeout: import bound per case. probe_timeout: bound on the child's use().
    stall: window of the ``stalled`` hang rule. capture: "full", "light" or
    "none" (evidence for hung children). repeat: runs per case. parallel: cases at once.
    log_dir: where evidence goes. command: the user's command line (evidence headers).
    """

    timeout: float = 60.0
    probe_timeout: float = 10.0
    stall: float = 2.0
    capture: str = "light"
    repeat: int = 1
    parallel: int = 2
    log_dir: Path = Path("crash_dumps")  # in the current folder, never in site-packages
    command: list[str] | None = None  # the user's command line, for the header of evidence files


@dataclass
class CaseRun(Record):
    """One run of one case: the observed outcome of the forked child (an Outcome, None
    when the check could not run it; ``signal`` for CRASH), the check's verdict, and details."""

    outcome: Outcome | None
    verdict: str | None
    rule: str | None = None
    detail: str = ""
    evidence_log: str | None = None
    seconds: float = 0.0
    import_seconds: float | None = None
    error: str | None = None
    lost_threads: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)  # processes the child left running, stopped by check
    signal: str | None = None

    @property
    def observed(self) -> str | None:
        """The outcome as the lab shows it: ``HANG``, ``CRASH SIGSEGV`` (no rule); None when nothing ran."""
        return outcome_text(self.outcome, self.signal) if self.outcome is not None else None

    def to_dict(self) -> dict:
        """JSON-ready record; ``outcome`` is the observed text (``CRASH SIGSEGV``)."""
        data = asdict(self)
        data.pop("signal")
        data["outcome"] = self.observed
        return data


@dataclass
class CaseResult:
    """Every run of one case, and whether the checker was right about it."""

    case: Case
    runs: list[CaseRun]

    @property
    def outcomes(self) -> Counter:
        """How many runs ended in each outcome."""
        return Counter(r.observed or "NO RESULT" for r in self.runs)

    @property
    def outcome(self) -> str:
        """The outcome of the runs, e.g. ``HANG``, or ``PASS 3, ERROR 2`` when they differ."""
        counts = self.outcomes
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{o} {n}" for o, n in counts.most_common())

    @property
    def verdict(self) -> str:
        """The check's verdict (all runs), e.g. ``UNSAFE``."""
        verdicts = Counter(r.verdict or "NONE" for r in self.runs)
        return next(iter(verdicts)) if len(verdicts) == 1 else ", ".join(verdicts)

    @property
    def outcome_right(self) -> bool:
        """Every run's outcome is one of the measured ones (crashes compared by outcome word)."""
        return bool(self.runs) and all(r.outcome is not None and r.outcome.value in self.case.expected
                                       for r in self.runs)

    @property
    def check_right(self) -> bool:
        """Every run's verdict is the expected one."""
        return all(r.verdict == self.case.verdict for r in self.runs)

    @property
    def right(self) -> bool:
        """Outcome and verdict both as expected."""
        return self.outcome_right and self.check_right

    def to_dict(self) -> dict:
        """JSON-ready record of the case and its runs."""
        c = self.case
        return {"case": c.name, "module": c.module, "summary": c.summary, "control": c.control,
                "env": c.env, "expected_outcome": list(c.expected), "deterministic": c.deterministic,
                "expected_verdict": c.verdict, "observed": self.outcome, "verdict": self.verdict,
                "outcome_right": self.outcome_right, "check_right": self.check_right, "right": self.right,
                "note": c.note, "runs": [r.to_dict() for r in self.runs]}


def select_cases(names: list[str] | None, everything: bool) -> list[Case]:
    """The cases for ``--case NAME`` (repeatable) or ``--all``, in catalogue order.
    Raises UsageError for an unknown name or an empty selection."""
    if everything:
        return list(CASES)
    if not names:
        raise UsageError("no case chosen", "use --all, or --case NAME (see --list)")
    chosen = []
    for name in names:
        try:
            case = get_case(name)
        except KeyError:
            raise UsageError(f"unknown case {name!r}",
                             f"use one of {', '.join(c.name for c in CASES)}") from None
        if case not in chosen:
            chosen.append(case)
    return chosen


def _run_once(case: Case, options: LabOptions, cancel: threading.Event | None = None) -> CaseRun:
    scratch = make_temp_dir("lab", case.name)
    try:
        run: CheckRun = run_check(CheckRequest(
            target=case.module, kind="module", probe=case.probe, timeout=options.timeout,
            probe_timeout=options.probe_timeout, stall=options.stall, capture=options.capture,
            log_dir=str(Path(options.log_dir).resolve()), scenario=f"lab_{case.name}", cwd=str(PACKAGE_ROOT),
            env={**case.env, CASE_DIR_ENV: str(scratch)}, command=options.command), cancel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = CaseRun(outcome=None, verdict=run.verdict.value if run.verdict else None,
                     seconds=run.seconds, import_seconds=run.import_seconds)
    if run.status != "ok":
        result.error = f"{run.status}: {run.error}"
        result.detail = (run.error_detail or run.output or "")[-2000:]
        return result
    if run.report:
        result.findings = [f"{f['level']} {f['title']}" for f in run.report["findings"]]
    probe = run.probe or {}
    outcome = probe.get("outcome")
    result.outcome = Outcome(outcome) if outcome else None
    result.signal = probe.get("signal") if result.outcome is Outcome.CRASH else None
    result.rule, result.detail = probe.get("rule"), probe.get("detail", "")
    evidence = probe.get("evidence") or {}
    result.evidence_log = evidence.get("log")
    result.lost_threads = evidence.get("lost_threads") or []
    result.leftovers = probe.get("leftovers") or []
    return result


def run_case(case: Case, options: LabOptions | None = None, cancel: threading.Event | None = None) -> CaseResult:
    """Run ``case`` ``options.repeat`` times (one after the other) and return the
    result; stops early once ``cancel`` is set."""
    options = options or LabOptions()
    runs = []
    for _ in range(options.repeat):
        if cancel is not None and cancel.is_set():
            break
        runs.append(_run_once(case, options, cancel))
    return CaseResult(case, runs)


def run_lab(cases: list[Case], options: LabOptions | None = None,
            progress: Callable[[str, str], None] | None = None) -> list[CaseResult]:
    """Run every case (``options.parallel`` at a time) and return results in the
    order of ``cases``. Each run is bounded (see run_check); nothing is left
    running, also when the calling thread is interrupted (every case's runner
    is killed, then the exception propagates)."""
    options = options or LabOptions()
    progress = progress or (lambda name, status: None)
    cancel = threading.Event()

    def one(case: Case) -> CaseResult:
        progress(case.name, "running")
        result = run_case(case, options, cancel)
        if not cancel.is_set():
            flag = "" if result.right else "  (NOT as expected)"
            progress(case.name, f"{result.outcome} / {result.verdict}{flag}")
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, min(options.parallel, len(cases))))
    try:
        futures = [pool.submit(one, case) for case in cases]
        return [f.result() for f in futures]
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def agreement(results: list[CaseResult]) -> tuple[int, int]:
    """(cases right, cases)."""
    return sum(r.right for r in results), len(results)


def lab_table(results: list[CaseResult]) -> list[str]:
    """The side-by-side table: case, what it sets up, expected and observed
    outcome, expected verdict and check's verdict, right or not."""
    header = ("CASE", "KIND", "EXPECTED", "OBSERVED", "SHOULD BE", "CHECK", "RIGHT")
    rows = []
    for r in results:
        expected = r.case.expected_text() + ("" if r.case.deterministic else " (not deterministic)")
        rows.append((r.case.name, "control" if r.case.control else "case", expected, r.outcome,
                     r.case.verdict, r.verdict, "yes" if r.right else "NO"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return out


def lab_details(results: list[CaseResult]) -> list[str]:
    """Per case: what it sets up, the note on the measurement, and for each run
    that did not go as expected (or hung), the detail and the evidence file."""
    out = []
    for r in results:
        out.append(f"{r.case.name}: {r.case.summary}" + (f" [{', '.join(f'{k}={v}' for k, v in r.case.env.items())}]"
                                                         if r.case.env else ""))
        for run in r.runs:
            if run.error:
                out.append(f"    error: {run.error}")
                out += ["      " + line for line in run.detail.splitlines()[-8:]]
                continue
            out.append(f"    observed {run.outcome_text()} in {run.seconds:.1f} s: {run.detail[:160]}")
            if run.evidence_log:
                out.append(f"    evidence: {run.evidence_log}")
            if run.leftovers:
                out.append(f"    note: the child left {len(run.leftovers)} process(es) running: stopped")
        if r.runs and r.runs[0].findings:
            out.append(f"    check: {r.runs[0].findings[0][:200]}")
    return out


def lab_record(results: list[CaseResult], options: LabOptions, wall_seconds: float) -> dict:
    """The JSON record of a lab run (cases, agreement, options, platform and versions)."""
    from .versions import package_versions, platform_record

    right, total = agreement(results)
    return {"agreement": {"right": right, "cases": total, "figure": f"{right}/{total}"},
            "cases": [r.to_dict() for r in results],
            "options": {"timeout": options.timeout, "probe_timeout": options.probe_timeout, "stall": options.stall,
                        "capture": options.capture, "repeat": options.repeat},
            "platform": platform_record(),
            "versions": package_versions(("grpcio", "chromadb", "redis", "numpy", "tokenizers", "celery")),
            "wall_seconds": round(wall_seconds, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
