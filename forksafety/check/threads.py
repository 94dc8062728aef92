"""What the OS shows about this process's threads: their ids, and the shared object
whose code runs each one (a cheap, sampling "unwinder" over ``/proc/<pid>/mem``).

Part of the checker (``forksafety.check``). Linux only; elsewhere the functions
return nothing. Starts no thread and opens nothing but /proc files.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import time
from dataclasses import dataclass

STACK_SCAN_BYTES = 32768  # bytes of a thread's stack read from its stack pointer upwards


def list_tids(pid: int | str = "self") -> list[int]:
    """Thread ids of ``pid`` (default this process) from /proc/<pid>/task; [] when unreadable."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def read_proc(path: str) -> str | None:
    """The text of a /proc file, None when it cannot be read (gone, refused)."""
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
    text = read_proc(f"/proc/{pid}/maps")
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
    raw = read_proc(f"/proc/{pid}/task/{tid}/syscall")
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


