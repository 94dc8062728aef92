"""Who started which thread, SQLite connection and socket: the ``Tracker`` (audit
hook + ``threading.Thread.start`` wrapper) and the Python stacks it records, shown
without forksafety's own frames (``format_stack``).

Part of the checker (``forksafety.check``). Starts no thread and opens nothing.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec

from .threads import list_tids

Frame = tuple[str, int, str]  # (filename, line, function)


def python_stack(skip: int = 1, limit: int = 200) -> list[Frame]:
    """The Python stack of the calling thread, outermost first, without the
    ``skip`` innermost frames (1: the caller of ``python_stack``)."""
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


# Modules whose frames are ours, not the user's: the checker itself, its runner and the guard.
# Named as modules, not as file names, so a moved or renamed file cannot silently break this.
OWN_MODULES = ("forksafety.check", "forksafety.checkrun", "forksafety.guard")
STDLIB_DIR = os.path.dirname(os.__file__)
SCRIPTS_DIR = os.path.abspath(sysconfig.get_path("scripts"))  # console scripts: pytest, celery, ...


def module_file(name: str) -> str:
    """The source file of module ``name`` (found with importlib, not imported).
    Raises LookupError when there is no such module (a rename of ours: fail loudly)."""
    spec = find_spec(name)
    if spec is None or spec.origin is None:
        raise LookupError(f"module {name} not found")
    return spec.origin


@lru_cache(maxsize=1)
def _own_paths() -> tuple[frozenset[str], tuple[str, ...]]:
    """(our own files, our own folders): a package's whole folder, a module's file."""
    files, folders = set(), []
    for name in OWN_MODULES:
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            raise LookupError(f"module {name} not found")
        if spec.submodule_search_locations:
            folders += [os.path.abspath(p) + os.sep for p in spec.submodule_search_locations]
        else:
            files.add(os.path.abspath(spec.origin))
    return frozenset(files), tuple(folders)


def is_own_file(filename: str) -> bool:
    """True when ``filename`` (a code object's co_filename) belongs to OWN_MODULES."""
    if filename.startswith("<"):
        return False
    files, folders = _own_paths()
    path = os.path.abspath(filename)
    return path in files or path.startswith(folders)


def is_library_file(filename: str) -> bool:
    """True for site-packages and standard-library files, and for the environment's
    console scripts (``venv/bin/pytest``, ``venv/bin/celery``: the folder is
    ``sysconfig.get_path("scripts")``, the files pip generates from entry points):
    not the user's own code."""
    if "site-packages" in filename or filename.startswith(STDLIB_DIR):
        return True
    return not filename.startswith("<") and os.path.dirname(os.path.abspath(filename)) == SCRIPTS_DIR


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
        if filename.startswith("<frozen ") or is_own_file(filename) or "/importlib/" in norm:
            continue
        if "site-packages" + os.sep in filename:
            shown = filename.split("site-packages" + os.sep, 1)[1]
        else:
            shown = filename[len(cwd):] if filename.startswith(cwd) else filename
        kept.append((f"{shown}:{line} in {func}", not is_library_file(filename)))
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
        self._known_tids = set(list_tids())
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
        tids = list_tids()
        new = [t for t in tids if t not in self._known_tids]
        if not new:
            return
        # our own frames (scan, _on_event, _audit_hook) are dropped by format_stack
        stack = python_stack(1) if threading.get_ident() == self._main_ident else None
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
                                                    "stack": python_stack(1)}
        elif event == "socket.connect" and len(args) >= 2:
            try:
                fd = args[0].fileno()
            except Exception:  # noqa: BLE001 - a closed or odd socket: nothing to record
                fd = -1
            if fd >= 0:
                self.sockets[fd] = {"address": repr(args[1]), "stack": python_stack(1)}
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
            self._forksafety_started_at = python_stack(1)
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


