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
The package is a facade (as pystack's ``engine.py``): its modules are
``tracking`` (Tracker, stacks), ``threads`` (the OS view of threads),
``inspection`` (records, findings, ``inspect_process``), ``text`` (lines for
people) and ``run`` (``run_check``); ``__all__`` lists what the rest of the
package and users may use. Importing it starts no thread and opens no connection.
"""

from __future__ import annotations

from ..origins import ORIGINS_FILE, OriginEntry, Origins, load_origins
from .tracking import (
    FirstSeen,
    Frame,
    OWN_MODULES,
    STDLIB_DIR,
    Tracker,
    current_tracker,
    format_stack,
    is_library_file,
    is_own_file,
    module_file,
    python_stack,
    start_tracking,
)
from .threads import (
    GONE,
    STACK_SCAN_BYTES,
    list_tids,
    owner_library,
    read_proc,
    thread_libraries,
    thread_owners,
)
from .inspection import (
    Finding,
    IS_LINUX,
    LEVELS,
    ObjectRecord,
    Report,
    SQLITE_MAGIC,
    Safety,
    SocketRecord,
    SqliteRecord,
    ThreadRecord,
    describe_python_thread,
    inspect_process,
    plural,
    verdict_of,
)
from .text import (
    fixes,
    format_report,
    short_summary,
)
from .run import (
    CheckRequest,
    CheckRun,
    PACKAGE_ROOT,
    PROBE_CAPTURE,
    TARGET_KINDS,
    run_check,
    runner_environment,
    tool_failure_line,
)

__all__ = [
    "CheckRequest",
    "CheckRun",
    "Finding",
    "FirstSeen",
    "Frame",
    "GONE",
    "IS_LINUX",
    "LEVELS",
    "ORIGINS_FILE",
    "OWN_MODULES",
    "ObjectRecord",
    "OriginEntry",
    "Origins",
    "PACKAGE_ROOT",
    "PROBE_CAPTURE",
    "Report",
    "SQLITE_MAGIC",
    "STACK_SCAN_BYTES",
    "STDLIB_DIR",
    "Safety",
    "SocketRecord",
    "SqliteRecord",
    "TARGET_KINDS",
    "ThreadRecord",
    "Tracker",
    "current_tracker",
    "describe_python_thread",
    "fixes",
    "format_report",
    "format_stack",
    "inspect_process",
    "is_library_file",
    "is_own_file",
    "list_tids",
    "load_origins",
    "module_file",
    "owner_library",
    "plural",
    "python_stack",
    "read_proc",
    "run_check",
    "runner_environment",
    "short_summary",
    "start_tracking",
    "thread_libraries",
    "thread_owners",
    "tool_failure_line",
    "verdict_of",
]
