"""What a fork() would copy into a child, and whether that is safe: the library
behind ``python -m forksafety check``, ``forksafety.guard`` and the lab.

fork(2): "The child process is created with a single thread--the thread that
called fork()". Every other thread of the parent is simply absent in the child,
while the memory those threads guarded (held locks, queues they would have
served, runtime state) is copied as it was. This module looks at the *current*
process and reports:

* native threads, from the OS (``/proc/self/task/*/comm`` on Linux; what psutil
  can see elsewhere), each with a known origin where one is known. Origins come
  from the one data file ``threadorigins.json`` (every entry has a source): by
  thread name, else by the shared object whose code addresses sit on the
  thread's stack (read from ``/proc/self/mem`` at the stack pointer that
  ``/proc/self/task/<tid>/syscall`` reports; a cheap, sampling "unwinder");
* Python threads alive, with what they run and, when ``Tracker`` was started
  before them, the stack that started them;
* open SQLite databases and sockets among the file descriptors, and live
  objects of libraries whose docs give fork rules (sqlite3, gRPC channels,
  redis-py pools, SQLAlchemy engines...);
* a verdict: SAFE, RISK (no thread, but state the library's docs say must not
  cross a fork, e.g. an open SQLite connection: sqlite.org "How To Corrupt An
  SQLite Database File", section 2.6) or UNSAFE (threads a child would lose),
  each finding with its fix in one line and its source.

``run_check`` runs all of that in a fresh interpreter (``forksafety.checkrun``)
with a bounded timeout, so a target that hangs at import is reported, not
waited on. Library code here returns data (dataclasses); only CLIs print.
Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import bisect
import enum
import gc
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ForkSafetyError
from .origins import ORIGINS_FILE, OriginEntry, Origins, load_origins  # noqa: F401 - re-exported

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
IS_LINUX = sys.platform.startswith("linux")
SQLITE_MAGIC = b"SQLite format 3\x00"
STACK_SCAN_BYTES = 32768  # bytes of a thread's stack read from its stack pointer upwards


class Safety(str, enum.Enum):
    """The verdict. SAFE: nothing a fork would break. RISK: no thread a child
    would lose, but state whose library says it must not cross a fork.
    UNSAFE: threads a forked child would lose."""

    SAFE = "SAFE"
    RISK = "RISK"
    UNSAFE = "UNSAFE"

    def __str__(self) -> str:
        return self.value


# Finding levels, from a per-entry ``safety`` ("unsafe", "risk", "handled").
LEVELS = {"unsafe": "UNSAFE", "risk": "RISK", "handled": "INFO", "info": "INFO"}
_LEVEL_RANK = {"INFO": 0, "RISK": 1, "UNSAFE": 2}


# --------------------------------------------------------------------------------------
# Tracker: who started which thread, connection and socket
# --------------------------------------------------------------------------------------
Frame = tuple[str, int, str]  # (filename, line, function)


def _stack(skip: int = 1, limit: int = 200) -> list[Frame]:
    """The Python stack of the calling thread, outermost first, without the
    ``skip`` innermost frames (1: the caller of ``_stack``)."""
    try:
        frame = sys._getframe(skip + 1)
    except ValueError:
        return []
    out: list[Frame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    out.reverse()
    return out


_OWN_FILES = ("forksafety/check.py", "forksafety/checkrun.py", "forksafety/guard.py")
_STDLIB_DIR = os.path.dirname(os.__file__)


def _is_library_file(filename: str) -> bool:
    return "site-packages" in filename or (filename.startswith(_STDLIB_DIR) and "site-packages" not in filename)


def format_stack(frames: list[Frame] | None, limit: int = 8) -> list[str]:
    """Readable lines ``path:line in function`` for ``frames`` (outermost first),
    without importlib's, runpy's and forksafety's own frames; site-packages paths
    shortened, paths relative to the current folder when inside it. Starts at the
    outermost frame of the user's own code (not the standard library, not
    site-packages) when there is one; when longer than ``limit``, keeps that
    frame, "...", and the innermost frames."""
    if not frames:
        return []
    cwd = os.getcwd() + os.sep
    kept: list[tuple[str, bool]] = []
    for filename, line, func in frames:
        norm = filename.replace(os.sep, "/")
        if filename.startswith("<frozen ") or norm.endswith(_OWN_FILES) or "/importlib/" in norm:
            continue
        if "site-packages" + os.sep in filename:
            shown = filename.split("site-packages" + os.sep, 1)[1]
        else:
            shown = filename[len(cwd):] if filename.startswith(cwd) else filename
        kept.append((f"{shown}:{line} in {func}", not _is_library_file(filename)))
    anchor = next((i for i, (_, user) in enumerate(kept) if user), 0)
    kept = kept[anchor:]  # what ran before the user's code (runners, celery's find_app...) says little
    if len(kept) <= limit:
        return [text for text, _ in kept]
    return [kept[0][0], "...", *(text for text, _ in kept[len(kept) - (limit - 2):])]


@dataclass
class FirstSeen:
    """A native thread the Tracker saw appear: when (time.time(), seconds since
    the epoch) and the Python stack running at that moment in the main thread
    (None when the event came from another thread)."""

    time: float
    stack: list[Frame] | None


class Tracker:
    """Records, from the moment ``start()`` is called, who made threads,
    SQLite connections and sockets, so reports can say where they came from.

    How: a ``sys.addaudithook`` hook (PEP 578) that, at most every ``interval``
    seconds, lists ``/proc/self/task`` and notes the Python stack when a new
    native thread appears; the audit events ``sqlite3.connect`` /
    ``sqlite3.connect/handle`` and ``socket.connect``; and a wrapper around
    ``threading.Thread.start`` that records the starting stack on the thread.
    Audit hooks cannot be removed: ``stop()`` makes the hook return at once.
    Starts no thread and opens nothing.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.active = False
        self.native_first_seen: dict[int, FirstSeen] = {}
        self.sqlite_connections: dict[int, dict] = {}  # id(connection) -> database, stack
        self.sockets: dict[int, dict] = {}  # fd -> address, stack
        self._known_tids: set[int] = set()
        self._busy = False
        self._last = 0.0
        self._pending_db: object = None
        self._main_ident = threading.main_thread().ident

    def start(self) -> Tracker:
        """Start recording (idempotent). Returns self."""
        global _HOOK_INSTALLED, _ORIG_START
        self._known_tids = set(_list_tids())
        self.active = True
        if not _HOOK_INSTALLED:
            sys.addaudithook(_audit_hook)
            _HOOK_INSTALLED = True
        if _ORIG_START is None:
            _ORIG_START = threading.Thread.start
            threading.Thread.start = _tracked_start
        return self

    def stop(self) -> None:
        """Stop recording (what was recorded stays); restore ``Thread.start``."""
        global _ORIG_START
        self.active = False
        if _ORIG_START is not None:
            threading.Thread.start = _ORIG_START
            _ORIG_START = None

    def scan(self) -> None:
        """Look for new native threads now (also done from the audit hook)."""
        tids = _list_tids()
        new = [t for t in tids if t not in self._known_tids]
        if not new:
            return
        # our own frames (scan, _on_event, _audit_hook) are dropped by format_stack
        stack = _stack(1) if threading.get_ident() == self._main_ident else None
        now = time.time()
        for tid in new:
            self.native_first_seen[tid] = FirstSeen(now, stack)
            self._known_tids.add(tid)

    def _on_event(self, event: str, args: tuple) -> None:
        if event == "sqlite3.connect":
            self._pending_db = args[0] if args else None
        elif event == "sqlite3.connect/handle" and args:
            self.sqlite_connections[id(args[0])] = {"database": os.fsdecode(self._pending_db)
                                                    if isinstance(self._pending_db, (str, bytes, os.PathLike))
                                                    else str(self._pending_db),
                                                    "stack": _stack(1)}
        elif event == "socket.connect" and len(args) >= 2:
            try:
                fd = args[0].fileno()
            except Exception:  # noqa: BLE001 - a closed or odd socket: nothing to record
                fd = -1
            if fd >= 0:
                self.sockets[fd] = {"address": repr(args[1]), "stack": _stack(1)}
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.scan()


_TRACKER: Tracker | None = None
_HOOK_INSTALLED = False
_ORIG_START = None


def _audit_hook(event: str, args: tuple) -> None:
    tracker = _TRACKER
    if tracker is None or not tracker.active or tracker._busy:
        return
    tracker._busy = True
    try:
        tracker._on_event(event, args)
    except Exception:  # noqa: BLE001 - an audit hook must never break the program it watches
        pass
    finally:
        tracker._busy = False


def _tracked_start(self: threading.Thread, *args, **kwargs):
    tracker = _TRACKER
    if tracker is not None and tracker.active:
        try:
            self._forksafety_started_at = _stack(1)
            self._forksafety_started_by = threading.current_thread().name
        except Exception:  # noqa: BLE001 - recording is best effort
            pass
    return (_ORIG_START or threading.Thread.start)(self, *args, **kwargs)


def start_tracking() -> Tracker:
    """Start (or return) the process-wide Tracker. See ``Tracker``."""
    global _TRACKER
    if _TRACKER is None:
        _TRACKER = Tracker()
    return _TRACKER.start()


def current_tracker() -> Tracker | None:
    """The process-wide Tracker, if ``start_tracking`` was called."""
    return _TRACKER


# --------------------------------------------------------------------------------------
# What the OS shows: threads, their names and the code they run; file descriptors
# --------------------------------------------------------------------------------------
def _list_tids(pid: int | str = "self") -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


@dataclass
class _Maps:
    """Executable file mappings (sorted) and every mapping's bounds of a process."""

    starts: list[int]
    entries: list[tuple[int, int, str]]
    regions: list[tuple[int, int]]


def _read_maps(pid: int | str = "self") -> _Maps | None:
    text = _read(f"/proc/{pid}/maps")
    if text is None:
        return None
    entries, regions = [], []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 2:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        regions.append((lo, hi))
        path = parts[5].strip() if len(parts) > 5 else ""
        if "x" in parts[1] and path.startswith("/"):
            entries.append((lo, hi, path))
    entries.sort()
    regions.sort()
    return _Maps([e[0] for e in entries], entries, regions)


# Shared objects every thread has on its stack: they say nothing about who made it.
_GENERIC_LIB = re.compile(r"^(libc[.-]|libm[.-]|libpthread|ld-linux|ld-|libstdc\+\+|libgcc_s|libdl[.-]|librt[.-]"
                          r"|libpython|python\d?(\.\d+)?$|libffi|libz[.-]|libutil|linux-vdso)")


def thread_libraries(tid: int, pid: int | str = "self", maps: _Maps | None = None,
                     nbytes: int = STACK_SCAN_BYTES) -> list[str] | None:
    """Shared objects (file names) whose code addresses appear on thread ``tid``'s
    stack, innermost first: a cheap way to tell which library runs a thread.

    Reads the stack pointer from ``/proc/<pid>/task/<tid>/syscall`` (proc(5)) and
    up to ``nbytes`` bytes of stack from ``/proc/<pid>/mem``; every 8-byte word
    that falls in an executable file mapping names that file. Needs ptrace read
    access (always given for the own process). Returns None while the thread is
    running (no stack pointer to read: try again), [] when it is not readable.
    Raises ProcessLookupError when the thread is gone. Linux only.
    """
    raw = _read(f"/proc/{pid}/task/{tid}/syscall")
    if raw is not None and raw.startswith("running"):
        return None
    if raw is None and not os.path.exists(f"/proc/{pid}/task/{tid}"):
        raise ProcessLookupError(tid)
    if not raw:
        return []
    parts = raw.split()
    try:
        sp = int(parts[-2], 16)
    except (ValueError, IndexError):
        return []
    maps = maps or _read_maps(pid)
    if maps is None or not maps.entries:
        return []
    i = bisect.bisect_right(maps.regions, (sp, float("inf"))) - 1
    end = maps.regions[i][1] if i >= 0 and maps.regions[i][0] <= sp < maps.regions[i][1] else sp + nbytes
    size = max(0, min(nbytes, end - sp)) // 8 * 8
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(sp)
            data = mem.read(size)
    except (OSError, OverflowError, ValueError):
        return []
    order: list[str] = []
    for (value,) in struct.iter_unpack("=Q", data[: len(data) // 8 * 8]):
        j = bisect.bisect_right(maps.starts, value) - 1
        if j >= 0 and value < maps.entries[j][1]:
            name = os.path.basename(maps.entries[j][2])
            if name not in order:
                order.append(name)
    return order


GONE = "<gone>"  # thread_owners: the thread exited while we looked


def thread_owners(tids: list[int], pid: int | str = "self", retries: int = 20,
                  interval: float = 0.01) -> dict[int, str | None]:
    """``{tid: owner library or None}`` for ``tids`` (see thread_libraries and
    owner_library); ``GONE`` for a thread that exited meanwhile (e.g. one whose
    Python ``join()`` already returned while the OS thread was still ending).
    A thread that is running (busy, ending, or spinning before it sleeps, as
    OpenBLAS's do) is sampled again up to ``retries`` times, ``interval`` seconds
    apart: at most ``retries * interval`` seconds in all."""
    maps = _read_maps(pid)
    owners: dict[int, str | None] = {}
    pending = list(tids)
    for attempt in range(retries + 1):
        still = []
        for tid in pending:
            try:
                libs = thread_libraries(tid, pid, maps)
            except ProcessLookupError:
                owners[tid] = GONE
                continue
            if libs is None:
                still.append(tid)
            else:
                owners[tid] = owner_library(libs)
        pending = still
        if not pending or attempt == retries:
            break
        time.sleep(interval)
    for tid in pending:
        owners[tid] = None
    return owners


def owner_library(libraries: list[str]) -> str | None:
    """The first shared object in ``libraries`` that is not libc, libpython & co."""
    return next((lib for lib in libraries if not _GENERIC_LIB.match(lib)), None)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------
@dataclass
class ThreadRecord:
    """One thread of the inspected process other than the calling one.

    name: the OS name (comm, 15 bytes at most; "?" where the OS gives none).
    python_name / runs / daemon: for Python threads (``threading``).
    library: the shared object running it (stack scan), when found.
    origin / used_by / safety / fix / source / note: from threadorigins.json, or generic.
    started_at: Python stack that started it (Python threads, when tracked).
    first_seen: Python stack running when the Tracker first saw it (native threads).
    """

    tid: int
    name: str
    python: bool = False
    python_name: str | None = None
    runs: str | None = None
    daemon: bool | None = None
    library: str | None = None
    origin: str = "native thread of unknown origin"
    used_by: str = ""
    known: bool = False
    safety: str = "unsafe"
    fix: str = ""
    source: str = ""
    note: str = ""
    started_at: list[str] | None = None
    first_seen: list[str] | None = None


@dataclass
class SqliteRecord:
    """An open SQLite database: its path, the file descriptors on it and on its
    -wal / -shm / -journal files, and (stdlib sqlite3) where it was opened."""

    path: str
    fds: list[int] = field(default_factory=list)
    side_files: list[str] = field(default_factory=list)
    opened_at: list[str] | None = None
    python_connections: int = 0


@dataclass
class SocketRecord:
    """An open socket: fd, family (e.g. AF_INET), type (SOCK_STREAM), addresses,
    TCP status, and the owner when known (library of the code that connected it)."""

    fd: int
    family: str
    type: str
    laddr: str = ""
    raddr: str = ""
    status: str = ""
    owner: str | None = None
    connected_at: list[str] | None = None


@dataclass
class ObjectRecord:
    """Live objects of a type with fork rules (threadorigins.json ``objects``)."""

    type: str
    origin: str
    count: int
    safety: str
    fix: str
    source: str
    note: str = ""
    detail: list[str] = field(default_factory=list)


@dataclass
class Finding:
    """One thing a fork would break, or that is fine and worth saying.

    level: "UNSAFE", "RISK" or "INFO". title: what, with counts. fix: one line.
    """

    level: str
    title: str
    fix: str
    source: str = ""
    note: str = ""
    items: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a fork of process ``pid`` would copy, and the verdict.

    caller_tid: the thread that inspected (the one a fork would keep).
    seconds: time the inspection took.
    """

    pid: int
    platform: str
    caller_tid: int
    verdict: Safety
    threads: list[ThreadRecord]
    sqlite: list[SqliteRecord]
    sockets: list[SocketRecord]
    objects: list[ObjectRecord]
    findings: list[Finding]
    seconds: float = 0.0

    def thread_groups(self) -> list[dict]:
        """Threads grouped by (name, origin): ``[{name, origin, count, safety, library}]``,
        most numerous first."""
        groups: dict[tuple, dict] = {}
        for t in self.threads:
            key = (t.name, t.origin, t.safety, t.python)
            g = groups.setdefault(key, {"name": t.name, "origin": t.origin, "used_by": t.used_by, "count": 0,
                                        "safety": t.safety, "library": t.library, "python": t.python,
                                        "known": t.known})
            g["count"] += 1
        return sorted(groups.values(), key=lambda g: (-_LEVEL_RANK[LEVELS[g["safety"]]], -g["count"], g["name"]))

    def lost_thread_names(self) -> list[str]:
        """Names of the threads a child would lose that make it unsafe (sorted)."""
        return sorted(t.name for t in self.threads if t.safety == "unsafe")

    def to_dict(self) -> dict:
        """JSON-ready dict (verdict as a string, thread groups included)."""
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["thread_groups"] = self.thread_groups()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """Rebuild a Report from ``to_dict`` output (e.g. read from the runner's file)."""
        return cls(pid=data["pid"], platform=data["platform"], caller_tid=data["caller_tid"],
                   verdict=Safety(data["verdict"]),
                   threads=[ThreadRecord(**t) for t in data["threads"]],
                   sqlite=[SqliteRecord(**s) for s in data["sqlite"]],
                   sockets=[SocketRecord(**s) for s in data["sockets"]],
                   objects=[ObjectRecord(**o) for o in data["objects"]],
                   findings=[Finding(**f) for f in data["findings"]],
                   seconds=data.get("seconds", 0.0))


def _qualified(obj: object) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}"


def describe_python_thread(thread: threading.Thread) -> str:
    """What a Python thread runs: its target (``module.function``) or, for a
    subclass that overrides ``run``, ``module.Class.run``."""
    target = getattr(thread, "_target", None)
    if target is not None:
        return _qualified(target)
    if type(thread).run is not threading.Thread.run:
        return f"{_qualified(type(thread))}.run"
    return "threading.Thread.run (no target)"


def _thread_records(origins: Origins, environ: dict[str, str], tracker: Tracker | None,
                    caller_tid: int, scan_stacks: bool, retries: int = 20) -> list[ThreadRecord]:
    pid = os.getpid()
    by_native = {t.native_id: t for t in threading.enumerate() if getattr(t, "native_id", None)}
    records: list[ThreadRecord] = []
    if IS_LINUX and os.path.isdir("/proc/self/task"):
        os_threads = []
        for tid in sorted(_list_tids()):
            comm = _read(f"/proc/self/task/{tid}/comm")
            if comm is not None:
                os_threads.append((tid, comm.strip()))
    else:  # macOS & co: psutil gives thread ids, no names
        try:
            import psutil

            os_threads = [(t.id, "?") for t in psutil.Process(pid).threads()]
        except Exception:  # noqa: BLE001 - psutil missing or refused: Python's view only
            os_threads = [(t.native_id, "?") for t in by_native.values()]
    generic = origins.generic["thread"]
    native = [(tid, name) for tid, name in os_threads if tid != caller_tid and
              (tid not in by_native or isinstance(by_native[tid], threading._DummyThread))]
    owners: dict[int, str | None] = {}
    if IS_LINUX and scan_stacks and native:
        # a known name says enough: one look for the [code: ...] label; unknown ones are sampled until readable
        named = [tid for tid, name in native if origins.for_thread_name(name)]
        unnamed = [tid for tid, name in native if not origins.for_thread_name(name)]
        owners.update(thread_owners(named, retries=0) if named else {})
        owners.update(thread_owners(unnamed, retries=retries) if unnamed else {})
    for tid, name in os_threads:
        if tid == caller_tid or owners.get(tid) == GONE:
            continue
        rec = ThreadRecord(tid=tid, name=name)
        py = by_native.get(tid)
        if py is not None and not isinstance(py, threading._DummyThread):
            rec.python, rec.python_name, rec.daemon = True, py.name, py.daemon
            rec.runs = describe_python_thread(py)
            entry = origins.for_python_target(rec.runs)
            if name == "?":
                rec.name = py.name[:15]
            rec.origin = entry.origin if entry else f"Python thread {py.name!r} running {rec.runs}"
            rec.started_at = format_stack(getattr(py, "_forksafety_started_at", None)) or None
        else:
            if py is not None:  # a native thread that called into Python (threading._DummyThread)
                rec.python_name = py.name
            entry = origins.for_thread_name(name) if name != "?" else None
            rec.library = owners.get(tid)
            if entry is None and rec.library:
                entry = origins.for_library(rec.library)
            seen = tracker.native_first_seen.get(tid) if tracker is not None else None
            if seen is not None:
                rec.first_seen = format_stack(seen.stack) or None
                if entry is None and rec.library is None and seen.stack:
                    package = _owner_package(seen.stack)
                    entry = origins.for_package(package) if package else None
            if entry is None:
                rec.origin = f"native thread running code of {rec.library}" if rec.library else \
                    "native thread of unknown origin"
        chosen = entry or generic
        rec.known = entry is not None
        if entry is not None:
            rec.origin, rec.used_by = entry.origin, entry.library
        rec.safety, rec.note = chosen.effective(environ)
        rec.fix, rec.source = chosen.fix, chosen.source
        records.append(rec)
    return records


def _fd_records(tracker: Tracker | None) -> tuple[list[SqliteRecord], list[SocketRecord]]:
    """SQLite database files and sockets among this process's file descriptors."""
    sqlite: dict[str, SqliteRecord] = {}
    sockets: list[SocketRecord] = []
    socket_fds: set[int] = set()
    if IS_LINUX and os.path.isdir("/proc/self/fd"):
        try:
            fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                socket_fds.add(fd)
                continue
            if not target.startswith("/"):
                continue
            base = target
            side = ""
            for suffix in ("-wal", "-shm", "-journal"):
                if target.endswith(suffix):
                    base, side = target[: -len(suffix)], target
            if side:
                if os.path.isfile(base) and _is_sqlite(base):
                    sqlite.setdefault(base, SqliteRecord(base)).side_files.append(os.path.basename(side))
                    sqlite[base].fds.append(fd)
                continue
            try:
                header = os.pread(fd, 16, 0)
            except OSError:
                header = _head(target)
            if header == SQLITE_MAGIC:
                sqlite.setdefault(target, SqliteRecord(target)).fds.append(fd)
    else:
        try:
            import psutil

            proc = psutil.Process()
            for f in proc.open_files():
                if _is_sqlite(f.path):
                    sqlite.setdefault(f.path, SqliteRecord(f.path)).fds.append(f.fd)
            socket_fds = {c.fd for c in proc.net_connections(kind="all") if c.fd >= 0}
        except Exception:  # noqa: BLE001 - best effort off Linux
            pass
    if socket_fds:
        sockets = _socket_records(socket_fds, tracker)
    if tracker is not None:
        for info in tracker.sqlite_connections.values():
            rec = sqlite.get(os.path.abspath(info["database"])) if info["database"] not in ("", ":memory:") else None
            if rec is not None and rec.opened_at is None:
                rec.opened_at = format_stack(info["stack"]) or None
    for rec in sqlite.values():
        rec.side_files = sorted(set(rec.side_files))
    return list(sqlite.values()), sockets


def _is_sqlite(path: str) -> bool:
    return _head(path) == SQLITE_MAGIC


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError:
        return b""


def _socket_records(fds: set[int], tracker: Tracker | None) -> list[SocketRecord]:
    out: dict[int, SocketRecord] = {}
    try:
        import psutil

        for c in psutil.Process().net_connections(kind="all"):
            if c.fd in fds:
                addr = lambda a: f"{a.ip}:{a.port}" if hasattr(a, "ip") else (str(a) if a else "")  # noqa: E731
                out[c.fd] = SocketRecord(fd=c.fd, family=getattr(c.family, "name", str(c.family)),
                                         type=getattr(c.type, "name", str(c.type)), laddr=addr(c.laddr),
                                         raddr=addr(c.raddr), status=c.status if c.status != "NONE" else "")
    except Exception:  # noqa: BLE001 - psutil refused: report the fds without addresses
        pass
    for fd in fds:
        out.setdefault(fd, SocketRecord(fd=fd, family="?", type="?"))
    if tracker is not None:
        for fd, rec in out.items():
            info = tracker.sockets.get(fd)
            if info:
                rec.connected_at = format_stack(info["stack"]) or None
                rec.owner = _owner_package(info["stack"])
    return [out[fd] for fd in sorted(out)]


def _owner_package(frames: list[Frame]) -> str | None:
    """Top-level package of the innermost frame outside the standard library."""
    for filename, _line, _func in reversed(frames):
        if filename.replace(os.sep, "/").endswith(_OWN_FILES) or filename.startswith("<"):
            continue
        if filename.startswith(_STDLIB_DIR) and "site-packages" not in filename:
            continue
        if "site-packages" in filename:
            rest = filename.split("site-packages" + os.sep, 1)[1]
            return rest.split(os.sep, 1)[0].removesuffix(".py")
        return None
    return None


def _object_records(origins: Origins, environ: dict[str, str], tracker: Tracker | None) -> list[ObjectRecord]:
    """Live objects of the types listed in threadorigins.json ``objects`` (gc scan;
    only types whose module is already imported are looked for)."""
    wanted: dict[type, OriginEntry] = {}
    for entry in origins.objects:
        module, _, name = entry.match.rpartition(".")
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type):
            wanted[cls] = entry
    if not wanted:
        return []
    # exact types, subclasses included: ``type(o) in set`` is several times cheaper than isinstance
    # over the ~10^5 objects a real application has (measured: 55 ms -> 10 ms with ChromaDB loaded)
    concrete: dict[type, type] = {}
    for cls in wanted:
        todo = [cls]
        while todo:
            sub = todo.pop()
            if sub not in concrete:
                concrete[sub] = cls
                todo.extend(sub.__subclasses__())
    found: dict[type, list] = {}
    for obj in [o for o in gc.get_objects() if type(o) in concrete]:
        found.setdefault(concrete[type(obj)], []).append(obj)
    records = []
    for cls, objs in found.items():
        entry = wanted[cls]
        detail: list[str] = []
        if entry.match == "sqlite3.Connection":
            objs = [o for o in objs if _sqlite_open(o)]
            memory = 0
            for o in objs:
                info = tracker.sqlite_connections.get(id(o)) if tracker else None
                db = info["database"] if info else None
                if db in (":memory:", ""):
                    memory += 1
                where = format_stack(info["stack"]) if info else []
                detail.append(f"database {db or '(unknown: opened before tracking)'}"
                              + (f", opened at {where[-1]}" if where else ""))
            if objs and memory == len(objs):  # in-memory only: nothing on disk to corrupt
                records.append(ObjectRecord(type=entry.match, origin=entry.origin + " (in-memory)", count=len(objs),
                                            safety="handled", fix="nothing to do: an in-memory database is private "
                                            "memory, copied like any other", source=entry.source, detail=detail))
                continue
        if not objs:
            continue
        safety, note = entry.effective(environ)
        records.append(ObjectRecord(type=entry.match, origin=entry.origin, count=len(objs), safety=safety,
                                    fix=entry.fix, source=entry.source, note=note, detail=detail[:5]))
    del found
    return records


def _sqlite_open(conn: object) -> bool:
    try:
        conn.in_transaction  # noqa: B018 - raises ProgrammingError on a closed connection
        return True
    except Exception:  # noqa: BLE001
        return False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _findings(threads: list[ThreadRecord], sqlite: list[SqliteRecord], sockets: list[SocketRecord],
              objects: list[ObjectRecord], origins: Origins) -> list[Finding]:
    findings: list[Finding] = []
    groups: dict[tuple, list[ThreadRecord]] = {}
    for t in threads:
        groups.setdefault((t.origin, t.used_by, t.safety, t.fix, t.note), []).append(t)
    for (origin, used_by, safety, fix, note), members in groups.items():
        names = Counter(t.name for t in members)
        items = [f"{n} x {name}" for name, n in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))]
        libs = sorted({t.library for t in members if t.library})
        what = "a forked child would not have" if safety != "handled" else "whose library handles fork itself"
        title = f"{_plural(len(members), 'thread')} {what} ({', '.join(items)}): {origin}"
        if used_by:
            title += f", used by {used_by}"
        if libs and not any(lib in origin for lib in libs):
            title += f" [code: {', '.join(libs)}]"
        findings.append(Finding(level=LEVELS[safety], title=title, fix=fix,
                                source=members[0].source, note=note, items=items))
    generic_sqlite = origins.generic["sqlite_file"]
    for rec in sqlite:
        extra = f" (+ {', '.join(rec.side_files)})" if rec.side_files else ""
        where = f"; opened at {rec.opened_at[-1]}" if rec.opened_at else ""
        findings.append(Finding(level=LEVELS[generic_sqlite.safety],
                                title=f"open SQLite database {rec.path}{extra} on fd "
                                      f"{', '.join(map(str, rec.fds))}{where}",
                                fix=generic_sqlite.fix, source=generic_sqlite.source))
    for obj in objects:
        if obj.type == "sqlite3.Connection" and obj.safety != "handled" and sqlite:
            continue  # the database file finding above already says it
        detail = "; ".join(obj.detail[:2]) + ("; ..." if len(obj.detail) > 2 else "")
        title = f"{_plural(obj.count, obj.origin)} alive ({obj.type})" + (f": {detail}" if detail else "")
        findings.append(Finding(level=LEVELS[obj.safety], title=title,
                                fix=obj.fix, source=obj.source, note=obj.note, items=obj.detail))
    if sockets:
        items = [f"fd {s.fd} {s.type} {s.laddr or '-'} -> {s.raddr or '-'}" + (f" ({s.owner})" if s.owner else "")
                 for s in sockets]
        findings.append(Finding(level="INFO", title=f"{_plural(len(sockets), 'open socket')}: parent and child "
                                "would share each connection", fix="make sure only one process uses each "
                                "connection (libraries that check os.getpid() do that for you)",
                                source="fork(2): the child inherits copies of the parent's open file descriptors",
                                items=items))
    findings.sort(key=lambda f: -_LEVEL_RANK[f.level])
    return findings


def verdict_of(findings: list[Finding]) -> Safety:
    """UNSAFE if any finding is UNSAFE, else RISK if any is RISK, else SAFE."""
    levels = {f.level for f in findings}
    if "UNSAFE" in levels:
        return Safety.UNSAFE
    if "RISK" in levels:
        return Safety.RISK
    return Safety.SAFE


def inspect_process(tracker: Tracker | None = None, *, fds: bool = True, objects: bool = True,
                    scan_stacks: bool = True, environ: dict[str, str] | None = None,
                    origins: Origins | None = None, retries: int = 20) -> Report:
    """Inspect the current process: the state a fork() called now would copy.

    tracker: where threads/connections were recorded (default: the process-wide
    one, if started). fds: look for SQLite files and sockets. objects: gc scan for
    known types. scan_stacks: name native threads by the library on their stack.
    environ: environment for library switches (default os.environ).
    Never raises for a thread or fd that vanishes meanwhile; raises
    ForkSafetyError only when threadorigins.json is unreadable.
    """
    started = time.perf_counter()
    origins = origins or load_origins()
    environ = dict(os.environ) if environ is None else environ
    tracker = tracker if tracker is not None else _TRACKER
    caller = threading.get_native_id()
    threads = _thread_records(origins, environ, tracker, caller, scan_stacks, retries)
    sqlite, sockets = _fd_records(tracker) if fds else ([], [])
    objs = _object_records(origins, environ, tracker) if objects else []
    findings = _findings(threads, sqlite, sockets, objs, origins)
    return Report(pid=os.getpid(), platform=sys.platform, caller_tid=caller, verdict=verdict_of(findings),
                  threads=threads, sqlite=sqlite, sockets=sockets, objects=objs, findings=findings,
                  seconds=round(time.perf_counter() - started, 4))


# --------------------------------------------------------------------------------------
# Text for people (CLIs print these lines; the library only builds them)
# --------------------------------------------------------------------------------------
def _where(stack: list[str]) -> str:
    """``user frame`` or ``user frame (in innermost frame)`` from a format_stack list."""
    return stack[0] if len(stack) == 1 else f"{stack[0]} (in {stack[-1]})"


def short_summary(report: Report) -> str:
    """One line naming the threads that make the process unsafe (or the risks),
    e.g. ``9 threads a forked child would lose: 6 x tokio-rt-worker (Tokio ...), ...``."""
    bad = [t for t in report.threads if t.safety == "unsafe"]
    if bad:
        def label(t: ThreadRecord) -> tuple[str, str]:
            if t.python:  # Python threads all have the OS name "python" before 3.14: use theirs
                where = f", started at {_where(t.started_at)}" if t.started_at else ""
                return t.python_name or t.name, f"Python thread running {t.runs}{where}"
            return t.name, t.origin + (f", {t.used_by}" if t.used_by else "")

        groups = Counter(label(t) for t in bad)
        parts = [f"{n} x {name} ({origin})" for (name, origin), n in sorted(groups.items(), key=lambda kv: -kv[1])]
        return f"{_plural(len(bad), 'thread')} a forked child would lose: {'; '.join(parts)}"
    risky = [f.title for f in report.findings if f.level == "RISK"]
    if risky:
        return "state that must not cross a fork: " + "; ".join(risky)
    return "nothing a fork would break"


def fixes(report: Report, extra: list[str] | None = None) -> list[str]:
    """The distinct one-line fixes of the UNSAFE and RISK findings, then ``extra``."""
    out: list[str] = []
    for f in report.findings:
        if f.level in ("UNSAFE", "RISK") and f.fix and f.fix not in out:
            out.append(f.fix)
    for line in extra or []:
        if line not in out:
            out.append(line)
    return out


def format_report(report: Report, target: str = "") -> list[str]:
    """The human-readable report: thread table, Python threads, SQLite, sockets,
    objects, verdict and findings with their fixes and sources."""
    lines: list[str] = []
    others = len(report.threads)
    where = "/proc/<pid>/task" if report.platform.startswith("linux") else "psutil"
    lines.append(f"Threads besides the one that would call fork() (OS view, {where}): {others}")
    if report.threads:
        groups = report.thread_groups()
        width = max(len(g["name"]) for g in groups)
        for g in groups:
            lib = f"  [{g['library']}]" if g["library"] and g["library"] not in g["origin"] else ""
            used = f" - {g['used_by']}" if g["used_by"] else ""
            level = LEVELS[g["safety"]]
            lines.append(f"  {g['count']:>3} x {g['name']:<{width}}  {level:<6}  {g['origin']}{used}{lib}")
        seen_lines: set[str] = set()
        for t in report.threads:
            if t.first_seen and not t.python:
                first = next((f for f in t.first_seen if f != "..."), t.first_seen[0])
                line = first if len(t.first_seen) == 1 else f"{first} ... {t.first_seen[-1]}"
                if (t.name, line) not in seen_lines:
                    seen_lines.add((t.name, line))
                    lines.append(f"        {t.name}: first seen while running {line}")
    py = [t for t in report.threads if t.python]
    lines.append(f"Python threads alive besides the caller: {len(py) or 'none'}")
    for t in py:
        lines.append(f"  {t.python_name!r} (tid {t.tid}{', daemon' if t.daemon else ''}) runs {t.runs}")
        if t.started_at:
            lines.append(f"      started at {_where(t.started_at)}")
    lines.append(f"SQLite databases open: {len(report.sqlite) or 'none'}")
    for s in report.sqlite:
        extra = f" (+ {', '.join(s.side_files)})" if s.side_files else ""
        lines.append(f"  {s.path}{extra}, fd {', '.join(map(str, s.fds))}")
    lines.append(f"Sockets open: {len(report.sockets) or 'none'}")
    for s in report.sockets:
        lines.append(f"  fd {s.fd} {s.family}/{s.type} {s.laddr or '-'} -> {s.raddr or '-'} {s.status}".rstrip()
                     + (f" (opened by {s.owner})" if s.owner else ""))
    if report.objects:
        lines.append("Objects with fork rules:")
        for o in report.objects:
            lines.append(f"  {o.count} x {o.type}: {o.origin} ({LEVELS[o.safety]})")
    lines.append("")
    lines.append(f"Verdict: {report.verdict.value}" + (f" ({target})" if target else ""))
    for f in report.findings:
        lines.append(f"  {f.level:<6} {f.title}")
        if f.note:
            lines.append(f"         note: {f.note}")
        if f.fix:
            lines.append(f"         fix: {f.fix}")
        if f.source:
            lines.append(f"         source: {f.source}")
    if not report.findings:
        lines.append("  nothing a fork would break was found")
    return lines


# --------------------------------------------------------------------------------------
# Running the check on a target in a fresh interpreter (see forksafety.checkrun)
# --------------------------------------------------------------------------------------
TARGET_KINDS = ("module", "file", "app")
PROBE_CAPTURE = ("full", "light", "none")


@dataclass
class CheckRequest:
    """What ``run_check`` asks the runner interpreter to do.

    kind: "module" (``pkg.tasks``), "file" (``path/to/tasks.py``) or "app" (a
    Celery app spec as for ``celery -A``). probe: a callable to call in a forked
    child (``name`` in the target, or ``module:attr``), with ``args`` (a JSON list
    or object). timeout: seconds the import may take. probe_timeout: seconds the
    probe child may take. stall: seconds of the ``stalled`` hang rule.
    capture: evidence for a hung probe child: "full" (py-spy and pystack),
    "light" (procinfo only), "none". command: the user's command line, shown
    in the header of evidence files (default: the runner's).
    """

    target: str
    kind: str = "module"
    probe: str | None = None
    args: list | dict | None = None
    timeout: float = 30.0
    probe_timeout: float = 15.0
    stall: float = 2.0
    capture: str = "full"
    log_dir: str = str(PACKAGE_ROOT / "crash_dumps")
    scenario: str = ""
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str | None = None
    command: list[str] | None = None  # the user's command line, for the header of evidence files


@dataclass
class CheckRun:
    """The result of ``run_check``.

    status: "ok"; "not-found" (no such module/file/app); "import-error" (the
    target raised while importing); "import-crashed" (importing the target
    killed the process with a signal or ended it, e.g. os._exit); "stopped"
    (the target stopped the process: state T, SIGSTOP); "timeout" (the import
    did not finish in time); "probe-not-found"; "runner-failed" (the runner
    itself died); "cancelled".
    error: one-line summary; error_detail: the import's own traceback, or the
    stack where a timed-out import hangs.
    report: ``Report.to_dict()``; probe: the probe record (outcome OK, HANG,
    CRASH, ERROR, signal, rule, detail, evidence, leftovers: pids of processes
    the probe left running, which were stopped).
    import_seconds: time the target's import took in the runner; seconds: wall time.
    """

    request: CheckRequest
    status: str
    report: dict | None = None
    probe: dict | None = None
    error: str | None = None
    error_detail: str | None = None
    import_seconds: float | None = None
    seconds: float = 0.0
    output: str = ""

    @property
    def verdict(self) -> Safety | None:
        """The check's verdict, or None when the target could not be inspected."""
        return Safety(self.report["verdict"]) if self.report else None

    @property
    def exit_code(self) -> int:
        """0 SAFE (and a probe, if any, OK); 1 RISK/UNSAFE or a probe that did not
        finish OK; 2 the target could not be imported or inspected."""
        if self.status != "ok" or self.report is None:
            return 2
        if self.verdict is not Safety.SAFE:
            return 1
        if self.probe is not None and self.probe.get("outcome") != "OK":
            return 1
        return 0

    def to_dict(self) -> dict:
        """JSON-ready record (request included)."""
        data = asdict(self)
        data["verdict"] = self.verdict.value if self.verdict else None
        data["exit_code"] = self.exit_code
        return data


def runner_environment(extra: dict[str, str | None] | None = None, run_id: str | None = None) -> dict[str, str]:
    """Environment for the runner interpreter: ours, ``extra`` (None values: unset), this package on
    PYTHONPATH (so ``-m forksafety.checkrun`` works from any folder) and the run id."""
    from .watch import RUN_ID_ENV

    env = dict(os.environ)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(PACKAGE_ROOT)) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if run_id:
        env[RUN_ID_ENV] = run_id
    return env


def run_check(request: CheckRequest, cancel: threading.Event | None = None) -> CheckRun:
    """Import ``request.target`` in a fresh interpreter, inspect it, optionally
    probe a fork, and return a CheckRun. Every wait is bounded: the import by
    ``request.timeout`` seconds (a hung import is reported with its stack), the
    probe by ``request.probe_timeout`` plus capture time. The runner's whole
    process tree (its process group, and every process tagged with this run's
    FORKSAFETY_RUN_ID) is killed on every path, including KeyboardInterrupt,
    and as soon as ``cancel`` (from another thread) is set: status "cancelled".
    Should this process die without a chance to clean up (SIGKILL), the runner
    dies with it (PR_SET_PDEATHSIG) and its watchdog stops every tagged process
    (see forksafety.checkrun.start_watchdog).
    Raises ForkSafetyError only for a request that cannot be started (bad kind).
    """
    from .watch import pdeathsig_preexec

    if request.kind not in TARGET_KINDS:
        raise ForkSafetyError(f"unknown target kind {request.kind!r}", f"use one of {', '.join(TARGET_KINDS)}")
    started = time.monotonic()
    run_id = f"check-{os.urandom(5).hex()}"
    from .watch import make_temp_dir, remove_stale_temp_folders

    remove_stale_temp_folders()
    work = make_temp_dir("check")
    req_path, result_path, out_path = work / "request.json", work / "result.json", work / "output.log"
    marker = work / "imported"
    import_deadline = started + request.timeout
    # after the import: the probe's own bound, evidence capture (py-spy/pystack) and margin
    tail = (request.probe_timeout + 60.0 if request.probe else 0.0) + 30.0
    payload = asdict(request)
    payload.update(result=str(result_path), marker=str(marker), run_id=run_id, caller_pid=os.getpid(),
                   lifetime=request.timeout + tail + 10.0)
    req_path.write_text(json.dumps(payload))
    proc = None
    status, error, detail = "runner-failed", None, None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forksafety.checkrun", str(req_path)],
                cwd=request.cwd or os.getcwd(), env=runner_environment(request.env, run_id),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pdeathsig_preexec(),
            )
        done_deadline = None
        stopped_since = None
        next_state_look = started
        while proc.poll() is None:
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                status, error = "cancelled", "cancelled"
                break
            if done_deadline is None and marker.exists():
                done_deadline = now + tail
            if now >= next_state_look:  # a process stopped by SIGSTOP never resumes by itself: say so early
                next_state_look = now + 0.25
                stopped_since = (stopped_since or now) if _state_letter(proc.pid) == "T" else None
                if stopped_since is not None and now - stopped_since >= 1.0:
                    status = "stopped"
                    error = (f"importing {request.target!r} stopped the process (state T: SIGSTOP or SIGTSTP)"
                             if not marker.exists() else
                             f"after importing {request.target!r}, the process was stopped (state T: SIGSTOP "
                             "or SIGTSTP, from a thread of the target?)")
                    detail = _stack_of_hung_import(proc.pid, stopped=True)
                    break
            if done_deadline is None and now >= import_deadline:
                status = "timeout"
                error = f"importing {request.target!r} did not finish within {request.timeout:g} s"
                detail = _stack_of_hung_import(proc.pid)
                break
            if done_deadline is not None and now >= done_deadline:
                status, error = "runner-failed", f"the check of {request.target!r} did not finish within " \
                                                 f"{tail:g} s after the import"
                break
            time.sleep(0.02)
        else:
            status = "finished"
    finally:
        if proc is not None:
            _kill_runner(proc, run_id)
    output = out_path.read_text(errors="replace") if out_path.exists() else ""
    run = CheckRun(request=request, status=status, error=error, error_detail=detail, output=output[-20000:])
    if status == "finished":
        run.status, run.error = _no_result(request.target, proc.returncode, marker.exists(), output)
        if result_path.exists():
            try:
                data = json.loads(result_path.read_text())
            except ValueError:
                data = None
            if data:
                run.status = data["status"]
                run.report, run.probe = data.get("report"), data.get("probe")
                run.error, run.error_detail = data.get("error"), data.get("error_detail")
                run.import_seconds = data.get("import_seconds")
    run.seconds = round(time.monotonic() - started, 3)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return run


def _no_result(target: str, returncode: int, imported: bool, output: str) -> tuple[str, str]:
    """(status, one-line error) for a runner that ended without writing its result:
    name the target and what ended the process (a signal, or an exit code)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = f"killed the process with {name}"
    else:
        cause = f"exited the process with code {returncode}"
    if not imported:
        if returncode >= 0 and "Traceback (most recent call last)" in output and "forksafety/checkrun.py" in output:
            return "runner-failed", f"the check runner failed (exit code {returncode}) while importing {target!r}"
        hint = " (os._exit() at import?)" if returncode >= 0 else ""
        return "import-crashed", f"importing {target!r} {cause}{hint}"
    hint = " (os._exit() in a thread of the target?)" if returncode >= 0 else " (in a thread of the target?)"
    return "runner-failed", f"after importing {target!r}, something {cause} before the check finished{hint}"


def _state_letter(pid: int) -> str | None:
    """The process state letter of ``pid`` (R, S, D, T, t, Z...), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _stack_of_hung_import(pid: int, stopped: bool = False) -> str:
    """py-spy's dump of the runner whose import hangs (bounded), or one line saying why not.
    ``stopped``: the process is in state T; py-spy then reads it without suspending it
    (``--nonblocking``), since suspending a stopped process fails."""
    try:
        from .capture import run_tool, tool_path

        command = [tool_path("py-spy"), "dump", "--pid", str(pid)] + (["--nonblocking"] if stopped else [])
        spy = run_tool(command)
        if spy.ok():
            return spy.output.strip()
        return f"(no stack: {tool_failure_line(spy.output)})"
    except Exception as exc:  # noqa: BLE001 - evidence is best effort
        return f"(no stack: {exc})"


def tool_failure_line(output: str) -> str:
    """One line for a failed tool run (py-spy & co): its ``Error:`` line and the
    innermost ``Caused by`` reason, never its own Rust backtrace."""
    lines = [ln.strip() for ln in output.splitlines()]
    if "Stack backtrace:" in lines:
        lines = lines[:lines.index("Stack backtrace:")]
    error = next((ln for ln in lines if ln.startswith("Error:")), None)
    causes = [ln.split(":", 1)[1].strip() for ln in lines if re.match(r"^\d+: ", ln)]
    if error:
        return error + (f" ({causes[-1]})" if causes else "")
    rest = [ln for ln in lines if ln and not ln.startswith(("Process ", "Python v"))]
    return (rest[-1] if rest else "the tool printed nothing")[:300]


def process_gone(proc) -> bool:
    """True when ``proc`` has exited (a zombie counts: it runs nothing any more)."""
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def stop_quietly(procs, grace: float = 0.5) -> list[int]:
    """SIGTERM every process, up to ``grace`` seconds, then SIGKILL and up to 2 s.
    A zombie counts as gone (and is reaped when it is our child), so orphans of an
    init that does not reap cost no wait. Returns the pids still running (normally [])."""
    import psutil

    procs = list(procs)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait
        while procs:
            for p in procs:
                try:
                    os.waitpid(p.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            procs = [p for p in procs if not process_gone(p)]
            if not procs or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    return [p.pid for p in procs]


def sweep_tagged(run_id: str, exclude: tuple[int, ...] = (), grace: float = 0.5, rounds: int = 3) -> list[int]:
    """Stop every live process (but this one and ``exclude``) tagged with this run's
    FORKSAFETY_RUN_ID, in up to ``rounds`` passes (a process forked during one pass
    is caught by the next). Returns the pids found. Bounded: each pass takes at
    most ``grace`` + 2 seconds."""
    from .watch import processes_of_run

    found: list[int] = []
    for _ in range(rounds):
        procs = [p for p in processes_of_run(run_id) if p.pid not in exclude and not process_gone(p)]
        if not procs:
            break
        found += [p.pid for p in procs]
        stop_quietly(procs, grace=grace)
    return found


def _kill_runner(proc: subprocess.Popen, run_id: str) -> None:
    """Kill the runner, its process group and anything tagged with ``run_id``; reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    sweep_tagged(run_id)
