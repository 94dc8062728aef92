"""The fork demo without Celery: the smallest faithful reproduction, and the fixes users try.

The parent (this process) opens a Chroma vector store with a persist_directory
(the harness's settings and embeddings, ``forksafety.store.make_store``), adds a
document, records its own threads (``/proc/self/task/*/comm``: tokio-rt-worker,
sqlx-sqlite-wor, ...), then calls ``os.fork()`` -- explicitly: never a
multiprocessing default, which is no longer ``fork`` on Linux from Python 3.14.
The child adds documents. fork(2) copies only the calling thread, so the child
has the store's state (locks, queues, the runtime's handles) but none of the
threads that serve it; on Linux it blocks forever in a futex wait.

Importing this module starts no thread and opens nothing: the store is opened
only by ``DemoRun.start()`` (on purpose: that is the demonstration). Every
child gets PR_SET_PDEATHSIG (SIGKILL) and is stopped with SIGKILL + waitpid on
every path (``DemoRun.stop_child``).

Variants (``VARIANTS``) are the fixes users try in practice; the expected outcome
of each is what this repository measured (see ``Variant.measured``).
"""

from __future__ import annotations

import fcntl
import gc
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import procinfo
from .capture import Section, child_evidence, count_names
from .outcome import Expected, Outcome, Record, current_platform
from .settings import Settings
from .variants import ALIASES, DEMO, resolve_variant
from .versions import package_versions, platform_record
from .forkchild import ForkedCall
from .watch import remove_stale_pid_folders, watch_process

DEFAULT_DOCUMENTS = 2  # documents the child adds in one add_documents call
PARENT_TEXT = "fork-safety demo: parent document"
POLL_INTERVAL = 0.02  # seconds between two looks at the child
STOP_TIMEOUT = 5.0  # seconds to wait for a SIGKILLed child to be reaped
CHILD_ERROR_EXIT = 3  # the child's exit code when its Python code raised


@dataclass(frozen=True)
class Variant:
    """One way of sharing (or not) the store across the fork.

    parent: what the parent does before the fork: "open" (opens the store and
      adds a document), "import" (imports chromadb and langchain_chroma and
      builds the embeddings, opens nothing), "nothing", or "open-close" (opens,
      adds, then drops the store and clears chromadb's client cache).
    child: what the child does: "inherited" (uses the parent's store object),
      "new-same-dir" (opens a new store on the same folder), "new-other-dir"
      (a new store on another folder), "clear-cache-same-dir" (clears
      chromadb's client cache, then opens a new store on the same folder).
    expected: outcome per platform ("linux", "darwin") when the child adds
      two or more documents in one call (the default).
    expected_one_document: where it differs, the outcome when the child adds
      exactly one document (``--documents 1``).
    measured: how the Linux expectation was measured (runs, outcome, timing).
    """

    name: str
    summary: str
    parent: str
    child: str
    expected: dict[str, Expected]
    measured: str = ""
    expected_one_document: dict[str, Expected] | None = None


_HANG = Expected(Outcome.HANG)
_PASS = Expected(Outcome.PASS)
_TRAP = Expected(Outcome.CRASH, "SIGTRAP")

# Linux: measured on Debian 12 x86_64 (kernel 6.18, glibc 2.36), 2 CPUs, CPython 3.11.7,
# chromadb 1.5.9, langchain-chroma 1.1.0: `demo_crash.py --variant NAME --timeout 5
# --no-stacks`, 10 runs per variant (``measured`` gives counts and the time from the
# fork to the verdict). A HANG "(deadline)" is a child with threads of its own (so no
# one-sample proof) whose main thread sat in an untimed private futex wait until the
# deadline; one run per such variant was also given 30 s: still stuck.
# macOS: NOT measured here (no macOS machine). "module-level" is what the original
# report shows (SIGTRAP raised by libdispatch in the child); the variants that
# hang on Linux are assumed to crash the same way; the others to finish.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("module-level", "the bug: the parent opens the store and adds a document; the child adds "
            "documents with the store it inherited", "open", "inherited",
            {"linux": _HANG, "darwin": _TRAP},
            "HANG 10/10, deadlock proven (1 thread, untimed private futex wait) 0.02-0.03 s after the fork; "
            "also 3/3 with --documents 1"),
    Variant("fixed", "the fix: the parent never imports chromadb nor opens the store; the child "
            "opens it after the fork, then adds documents", "nothing", "new-same-dir",
            {"linux": _PASS, "darwin": _PASS},
            "PASS 10/10 in 0.99-2.05 s (median 1.13 s: the child imports chromadb itself)"),
    Variant("lazy", "the parent imports chromadb and langchain_chroma and builds the "
            "embeddings (as a task module does) but opens no store; the child opens it",
            "import", "new-same-dir", {"linux": _PASS, "darwin": _PASS},
            "PASS 10/10 in 0.11-0.38 s (median 0.14 s); importing chromadb starts one thread "
            "(numpy's OpenBLAS pool, fork-aware), which does no harm"),
    Variant("lazy-in-task", "the parent opened the store; the child creates a new Chroma for the "
            "same persist_directory (chromadb hands back the parent's cached client)", "open",
            "new-same-dir", {"linux": _HANG, "darwin": _TRAP},
            "HANG 10/10, deadlock proven 0.02-0.05 s after the fork (the 'new' client is the parent's: "
            "SharedSystemClient caches one system per persist_directory); also 3/3 with --documents 1"),
    Variant("other-dir", "the parent opened the store; the child creates a new Chroma in a different "
            "persist_directory and adds documents", "open", "new-other-dir",
            {"linux": _HANG, "darwin": _TRAP},
            "HANG 10/10 with two documents (the child has its own 5-7 threads; its main thread waits "
            "forever in a futex: deadline 5 s, and 30 s in one run); PASS 10/10 with --documents 1 "
            "(0.05-0.11 s): a one-document test passes, a real batch hangs",
            expected_one_document={"linux": _PASS, "darwin": _PASS}),
    Variant("clear-system-cache", "the parent opened the store; the child calls chromadb's "
            "SharedSystemClient.clear_system_cache(), then creates a new Chroma for the same folder",
            "open", "clear-cache-same-dir", {"linux": _HANG, "darwin": _TRAP},
            "HANG 10/10 (deadline 5 s; 30 s in one run; 3/3 with --documents 1): a new client with "
            "threads of its own, main thread in an untimed futex wait"),
    Variant("close-before-fork", "the parent opens the store, adds a document, then drops it and clears "
            "chromadb's client cache before the fork; the child opens the same folder again",
            "open-close", "new-same-dir", {"linux": _HANG, "darwin": _TRAP},
            "HANG 10/10 (deadline 5 s; 30 s in one run; 3/3 with --documents 1); closing does not stop "
            "everything: 2 tokio-rt-worker threads stay in the parent"),
)}
DEFAULT_VARIANT = "module-level"


# Names and their older aliases: a run killed before the rename left folders too.
STALE_DEMO_FOLDER = re.compile(rf"demo-(?:{'|'.join(map(re.escape, [*VARIANTS, *ALIASES]))})-(\d+)-[a-z0-9_]+")


def remove_stale_demo_folders(chroma_dir: Path) -> list[Path]:
    """Remove the Chroma folders ``demo-<variant>-<pid>-<random>`` of demo runs that
    were killed (SIGKILL: no clean-up ran; their pid is gone). Returns the folders removed."""
    return remove_stale_pid_folders(chroma_dir, STALE_DEMO_FOLDER)


def get_variant(name: str) -> Variant:
    """The Variant called ``name`` (or an older alias of it, ``variants.ALIASES``); raises
    UsageError (listing the demo's names) for a name the demo does not run."""
    return VARIANTS[resolve_variant(name, DEMO)]


def expected_demo_outcome(variant: str, platform: str | None = None,
                          documents: int = DEFAULT_DOCUMENTS) -> Expected:
    """The outcome expected for ``variant`` on ``platform`` (default: this one) when
    the child adds ``documents`` documents in one call. Platforms other than
    linux and darwin get the Linux expectation."""
    v = get_variant(variant)
    table = v.expected_one_document if documents == 1 and v.expected_one_document else v.expected
    plat = platform or current_platform()
    return table.get(plat, table["linux"])


@dataclass
class DemoOptions:
    """Bounds and places for one demo run. Durations in seconds.

    timeout: how long the parent waits for the child (from the fork).
    stall: window of the ``stalled`` hang rule (forksafety.watch).
    early_verdict: stop watching as soon as a hang rule fires (a proven
      deadlock needs one sample); False waits the whole timeout.
    stacks: add py-spy / pystack stacks to the evidence of a hang.
    documents: how many documents the child adds in its one add_documents call.
    gate: the child waits on a FIFO before its action (for a debugger that
      must attach first: ``lldb_catch``).
    data_dir: folder under which the run's persist_directory is made (and removed).
    keep_data: keep that folder.
    """

    timeout: float = 10.0
    stall: float = 2.0
    early_verdict: bool = True
    stacks: bool = True
    documents: int = DEFAULT_DOCUMENTS
    gate: bool = False
    data_dir: Path | None = None
    keep_data: bool = False


@dataclass
class DemoRecord(Record):
    """Everything one demo run found: the one source for the log, the JSON and the CLI.

    seconds: from the fork to the verdict. child_seconds: the child's own time
    for its action (PASS runs). parent_threads: names recorded just before the fork.
    child_threads: names at the verdict (hang) or at the end of the child's work (PASS).
    lost_threads: the parent's threads the child did not inherit: all but the
    one that called fork (fork(2)); a child may start new threads of the same names.
    child_new_threads: the child's threads other than its main one (started after the fork).
    evidence: see ``forksafety.capture.child_evidence`` (hangs only).
    """

    variant: str
    summary: str
    outcome: Outcome
    expected: Expected
    seconds: float
    documents: int = DEFAULT_DOCUMENTS
    detail: str = ""
    signal: str | None = None
    rule: str | None = None
    exit_code: int | None = None
    parent_pid: int = 0
    child_pid: int | None = None
    parent_threads: list[str] = field(default_factory=list)
    child_threads: list[str] = field(default_factory=list)
    lost_threads: list[str] = field(default_factory=list)
    child_new_threads: list[str] = field(default_factory=list)
    child_state: str | None = None
    child_wchan: str | None = None
    syscall: str | None = None
    syscall_raw: str | None = None
    futex: dict | None = None
    child_seconds: float | None = None
    persist_directory: str = ""
    timeout: float = 0.0
    log: str | None = None
    evidence: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class ChildResult:
    """How the child ended: exit code or signal, and what it wrote to the result pipe."""

    exit_code: int | None
    signal: str | None
    report: dict


class DemoRun:
    """One demo run. Use as a context manager: the child is stopped and the data
    folder removed on every path (also on exceptions and Ctrl-C).

    ``start()`` prepares the parent and forks (returns the child pid),
    ``release()`` lets a gated child go, ``watch()`` waits for the verdict,
    ``evidence()`` reads the hung child, ``stop_child()`` SIGKILLs and reaps it.
    ``run()`` does all of that and returns the DemoRecord.
    """

    def __init__(self, variant: str, settings: Settings, options: DemoOptions | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.variant = get_variant(variant)
        self.settings = settings
        self.options = options or DemoOptions()
        self.progress = progress or (lambda text: None)
        base = self.options.data_dir or settings.chroma_dir
        base.mkdir(parents=True, exist_ok=True)
        # demo-<variant>-<pid>-<random>: a later run removes it when this pid is gone (a killed run,
        # remove_stale_demo_folders); a folder kept on purpose is named demo-<variant>-kept-<random>.
        owner = "kept" if self.options.keep_data else str(os.getpid())
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"demo-{self.variant.name}-{owner}-", dir=base))
        self.persist_dir = self.data_dir / "store"
        self.other_dir = self.data_dir / "other-store"
        self.parent_pid = os.getpid()
        self.parent_threads: list[str] = []
        self.not_inherited: list[str] = []
        self.child_pid: int | None = None
        self.gate_path: Path | None = None
        self._gate_writer: int | None = None
        self._gate_reader: int | None = None
        self._forked: ForkedCall | None = None
        self._child: ChildResult | None = None
        self._store = None

    # -- context management --------------------------------------------------------------
    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child (if any), close our pipes, remove the data folder (unless keep_data)."""
        try:
            self.stop_child()
        finally:
            if self._gate_writer is not None:
                try:
                    os.close(self._gate_writer)
                except OSError:
                    pass
            self._gate_writer = None
            if self._forked is not None:
                self._forked.close()
            if not self.options.keep_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- parent side ---------------------------------------------------------------------
    def prepare_parent(self) -> None:
        """What the variant does in the parent before the fork (may open the store: threads start)."""
        from langchain_core.documents import Document

        kind = self.variant.parent
        if kind in ("open", "open-close"):
            from .store import make_store

            self.progress(f"parent pid {self.parent_pid}: opening the store in {self.persist_dir}")
            self._store = make_store(self.settings, self.persist_dir)
            self._store.add_documents([Document(page_content=PARENT_TEXT, metadata={"source": "parent"})])
        elif kind == "import":
            import chromadb  # noqa: F401 - the point: imported before the fork
            import langchain_chroma  # noqa: F401

            from .embeddings import make_embeddings

            make_embeddings(self.settings)
            self.progress(f"parent pid {self.parent_pid}: imported chromadb and langchain_chroma, no store opened")
        if kind == "open-close":
            from chromadb.api.shared_system_client import SharedSystemClient

            self._store = None
            gc.collect()
            SharedSystemClient.clear_system_cache()
            gc.collect()
            self.progress(f"parent pid {self.parent_pid}: dropped the store and cleared chromadb's client cache")

    def start(self) -> int:
        """Prepare the parent, record its threads, fork. Returns the child pid.

        Raises whatever opening the store raises (chromadb errors) before any fork.
        """
        self.prepare_parent()
        threads = procinfo.list_threads(self.parent_pid, detail=False)
        forking = threading.get_native_id()  # fork(2) copies only this thread into the child
        self.parent_threads = [t.name for t in threads]
        self.not_inherited = sorted(t.name for t in threads if t.tid != forking)
        self.progress(f"parent pid {self.parent_pid}: {len(self.parent_threads)} thread(s) before the fork: "
                      f"{count_names(self.parent_threads)}")
        gate_r = None
        if self.options.gate:
            self.gate_path = self.data_dir / "gate.fifo"
            os.mkfifo(self.gate_path)
            # POSIX: a non-blocking O_RDONLY open of a FIFO succeeds at once; then a writer
            # can open. We keep the writer open so the child's read() blocks instead of seeing EOF.
            gate_r = os.open(self.gate_path, os.O_RDONLY | os.O_NONBLOCK)
            self._gate_writer = os.open(self.gate_path, os.O_WRONLY | os.O_NONBLOCK)
            fcntl.fcntl(gate_r, fcntl.F_SETFL, fcntl.fcntl(gate_r, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        self._gate_reader = gate_r
        # explicit fork (os.fork, never a start-method default): the point of the demo
        self._forked = ForkedCall(lambda: _child_main(self), new_group=False, error_code=CHILD_ERROR_EXIT,
                                  fork=os.fork)
        pid = self._forked.start()
        self.child_pid = pid  # first: close() must know it whatever happens next
        if gate_r is not None:
            os.close(gate_r)
            self._gate_reader = None
        self.progress(f"forked child pid {pid}")
        return pid

    def release(self) -> None:
        """Let a gated child go (writes one byte to the gate FIFO). No-op without a gate."""
        if self._gate_writer is not None:
            os.write(self._gate_writer, b"g")

    def _poll_child(self) -> ChildResult | None:
        """Reap the child if it ended (ForkedCall.poll); None while it runs."""
        if self._child is not None:
            return self._child
        forked = self._forked
        if forked is None:
            return None
        if forked.poll() is None:
            if forked.lost:
                self._child = ChildResult(None, None, {"error": "the child was reaped elsewhere"})
            return self._child
        code = forked.returncode
        self._child = ChildResult(None if code < 0 else code, forked.signal_name, forked.message)
        return self._child

    @property
    def _forked_at(self) -> float | None:
        return self._forked.started_at if self._forked is not None else None

    def watch(self) -> tuple[Outcome, str | None, str | None, procinfo.ProcSnapshot | None]:
        """Wait (bounded by ``options.timeout`` seconds from the fork) for the child,
        with the one watch loop (forksafety.watch.watch_process).

        Returns (outcome, rule, signal, last snapshot): PASS (exit 0), ERROR (other
        exit code), CRASH (killed by a signal we did not send), HANG (a hang rule
        of forksafety.watch fired, or the deadline passed; the child is left
        running for the caller to inspect).
        """
        assert self.child_pid is not None, "start() first"
        deadline = (self._forked_at or time.monotonic()) + self.options.timeout
        seen = watch_process(self._poll_child, self.child_pid, deadline, stall=self.options.stall,
                             early_verdict=self.options.early_verdict, interval=POLL_INTERVAL)
        if seen.hung:
            return Outcome.HANG, seen.rule, None, seen.snapshot
        ended: ChildResult = seen.value
        if ended.signal:
            return Outcome.CRASH, None, ended.signal, seen.snapshot
        return (Outcome.PASS if ended.exit_code == 0 else Outcome.ERROR), None, None, seen.snapshot

    def refresh(self, snap: procinfo.ProcSnapshot | None) -> procinfo.ProcSnapshot | None:
        """A fresh snapshot of the child, or ``snap`` when it cannot be read."""
        if self.child_pid is None:
            return snap
        try:
            return procinfo.snapshot(self.child_pid)
        except psutil.Error:
            return snap

    def evidence(self, snap: procinfo.ProcSnapshot | None) -> tuple[list[Section], dict]:
        """Evidence from the hung child (see capture.child_evidence); call before stop_child."""
        if snap is None or self.child_pid is None:
            return [], {}
        return child_evidence(self.child_pid, snap, self.parent_threads, self.parent_pid,
                              parent_label="demo parent (before the fork)", child_label="demo child",
                              stacks=self.options.stacks, lost=self.not_inherited)

    def stop_child(self) -> None:
        """SIGKILL the child and reap it (bounded by STOP_TIMEOUT seconds). Idempotent."""
        if self._forked is None or self._child is not None:
            return
        self._forked.kill(wait=STOP_TIMEOUT)
        if self._forked.returncode is not None:
            self._child = ChildResult(None, "SIGKILL (stopped by the demo)", {})

    def make_record(self, outcome: Outcome, rule: str | None, sig: str | None,
                    snap: procinfo.ProcSnapshot | None, evidence: dict | None = None) -> DemoRecord:
        """The DemoRecord of this run for the given verdict."""
        seconds = time.monotonic() - (self._forked_at or time.monotonic())
        rec = DemoRecord(variant=self.variant.name, summary=self.variant.summary, outcome=outcome,
                         expected=expected_demo_outcome(self.variant.name, documents=self.options.documents),
                         seconds=seconds, documents=self.options.documents, rule=rule,
                         signal=sig, parent_pid=self.parent_pid, child_pid=self.child_pid,
                         parent_threads=sorted(self.parent_threads), persist_directory=str(self.persist_dir),
                         timeout=self.options.timeout, evidence=evidence or None)
        report = self._child.report if self._child else {}
        if outcome is Outcome.HANG and snap is not None:
            rec.child_threads = sorted(t.name for t in snap.threads)
            rec.child_new_threads = sorted(t.name for t in snap.threads if t.tid != snap.pid)
            rec.child_state, rec.child_wchan = snap.state, snap.wchan
            if snap.syscall is not None:
                rec.syscall, rec.syscall_raw = snap.syscall.describe(), snap.syscall.raw
                rec.futex = (evidence or {}).get("futex") or snap.syscall.futex
            rec.lost_threads = list(self.not_inherited)
            rec.detail = (f"{rule}: no result after {seconds:.2f} s; child has {len(rec.child_threads)} "
                          f"thread(s), the parent had {len(self.parent_threads)}")
            if rec.syscall:
                rec.detail += f"; blocked in {rec.syscall}"
        elif outcome is Outcome.PASS:
            rec.exit_code = 0
            rec.child_threads = sorted(report.get("threads", []))
            rec.child_seconds = report.get("seconds")
            rec.detail = f"the child added {report.get('ids', '?')} documents in {report.get('seconds', '?')} s"
        elif outcome is Outcome.ERROR:
            rec.exit_code = self._child.exit_code if self._child else None
            rec.detail = report.get("error") or f"the child exited with code {rec.exit_code}"
        elif outcome is Outcome.CRASH:
            rec.detail = f"the child was killed by {sig}"
        return rec

    def run(self) -> DemoRecord:
        """The whole demo: start, (release), watch, evidence for a hang, stop the child.

        Never raises for an outcome (a failing parent set-up is an ERROR record);
        Interrupted and KeyboardInterrupt propagate after the child is stopped.
        """
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - the set-up failing is an outcome: ERROR
            rec = self.make_record(Outcome.ERROR, None, None, None)
            rec.detail = f"the parent could not prepare the store: {type(exc).__name__}: {exc}"
            return rec
        self.release()
        self.progress(f"waiting up to {self.options.timeout:g} s for child {self.child_pid}")
        outcome, rule, sig, snap = self.watch()
        evidence = None
        sections: list[Section] = []
        if outcome is Outcome.HANG:
            snap = self.refresh(snap)
            sections, evidence = self.evidence(snap)
        rec = self.make_record(outcome, rule, sig, snap, evidence)
        rec.extra["sections"] = sections
        self.stop_child()
        return rec


def _child_main(run: DemoRun) -> dict:
    """The forked child's work (run by ForkedCall, which reports it and ``os._exit``s):
    wait at the gate (if any), then do the variant's add_documents. Returns the report."""
    if run._gate_writer is not None:
        os.close(run._gate_writer)
    if run._gate_reader is not None:
        os.read(run._gate_reader, 1)
    t0 = time.monotonic()
    store = _child_store(run)
    from langchain_core.documents import Document

    texts = [f"fork-safety demo: child document {i + 1}" for i in range(run.options.documents)]
    ids = store.add_documents([Document(page_content=t, metadata={"source": "child"}) for t in texts])
    if len(ids) != len(texts):
        raise RuntimeError(f"add_documents returned {len(ids)} ids for {len(texts)} documents")
    return {"ids": len(ids), "seconds": round(time.monotonic() - t0, 3),
            "threads": procinfo.thread_names(os.getpid())}


def _child_store(run: DemoRun):
    """The store the child uses, per the variant's ``child`` action."""
    kind = run.variant.child
    if kind == "inherited":
        return run._store
    from .store import make_store

    if kind == "new-same-dir":
        return make_store(run.settings, run.persist_dir)
    if kind == "new-other-dir":
        return make_store(run.settings, run.other_dir)
    if kind == "clear-cache-same-dir":
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        return make_store(run.settings, run.persist_dir)
    raise ValueError(f"unknown child action {kind!r}")


def record_json(rec: DemoRecord, **extra: object) -> dict:
    """The JSON record: platform and versions, then the DemoRecord fields, then ``extra``."""
    plat = platform_record()
    data = rec.to_dict()
    data.get("extra", {}).pop("sections", None)
    return {"platform": plat["platform"], "machine": plat["machine"], "system": plat["system"],
            "python": plat["python"], "versions": package_versions(), **data, **extra}


def record_sections(rec: DemoRecord) -> list[Section]:
    """The sections of the demo log (before any evidence sections)."""
    lines = [f"variant: {rec.variant} -- {rec.summary}",
             f"outcome: {rec.outcome_text()}, expected {rec.expected} on {current_platform()}: "
             f"{'matched' if rec.matched else 'DID NOT MATCH'}",
             f"detail: {rec.detail}",
             f"the child adds {rec.documents} document(s) in one add_documents call",
             f"parent pid {rec.parent_pid}, child pid {rec.child_pid}, verdict after {rec.seconds:.3f} s "
             f"(timeout {rec.timeout:g} s)",
             f"persist_directory: {rec.persist_directory}"]
    threads = [f"parent before the fork: {len(rec.parent_threads)} thread(s): {count_names(rec.parent_threads)}"]
    if rec.outcome is Outcome.HANG:
        threads.append(f"child at the verdict: {len(rec.child_threads)} thread(s): {count_names(rec.child_threads)}")
        threads.append(f"not inherited by the child (fork(2) copies only the thread that calls it): "
                       f"{count_names(rec.lost_threads)}")
        if rec.child_new_threads:
            threads.append(f"started by the child after the fork: {count_names(rec.child_new_threads)}")
    elif rec.child_threads:
        threads.append(f"child at the end of its work: {len(rec.child_threads)} thread(s): "
                       f"{count_names(rec.child_threads)} (its own, started after the fork)")
    sections: list[Section] = [("outcome", lines), ("threads", threads)]
    if rec.outcome is Outcome.HANG:
        sections.append(("hang evidence", [f"state {rec.child_state}, wchan {rec.child_wchan}",
                                           f"syscall {rec.syscall} (/proc/{rec.child_pid}/syscall: {rec.syscall_raw})"]))
    return sections
