"""strace: the command line, and the child's unfinished futex call in a trace.

Part of ``forksafety.capture``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


# -- strace -----------------------------------------------------------------------------------------


def strace_command(trace: Path, command: list[str], strace: str = "strace") -> list[str]:
    """``strace -f -tt -A -o TRACE command...`` (strace(1): -f follows forks and
    threads, each line then starts with the pid; -tt adds wall time with
    microseconds; -A appends, so the header written first stays on top)."""
    return [strace, "-f", "-tt", "-A", "-o", str(trace), *command]


_STRACE_LINE = re.compile(r"^(\d+)\s+(\d\d:\d\d:\d\d\.\d+)\s+(.*)$")


@dataclass
class UnfinishedCall:
    """A syscall a process entered and never finished, from a ``strace -f -tt`` trace.

    line: the trace line (pid, time, call, ``<unfinished ...>``).
    ended: how it ended ("killed by SIGKILL", "resumed = ?", or "" when the trace stops there).
    before: the process's lines just before it (what it did before it blocked).
    """

    pid: int
    time: str
    line: str
    line_number: int
    ended: str
    before: list[str] = field(default_factory=list)


def find_unfinished_futex(trace_text: str, pid: int, context: int = 5) -> UnfinishedCall | None:
    """The last futex call of ``pid`` in a ``strace -f -tt`` trace that never returned.

    strace prints ``futex(... <unfinished ...>`` when another process writes a
    line while the call is in progress, and ``<... futex resumed>) = RESULT``
    when it returns; a call cut off by SIGKILL ends with ``= ?`` and
    ``+++ killed by SIGKILL +++``. Returns None when the last futex call of
    ``pid`` finished with a real result. ``context``: how many of the process's
    lines before the call to keep in ``before``.
    """
    last: tuple[int, re.Match] | None = None
    finished_after = False
    ended = ""
    recent: list[str] = []
    before: list[str] = []
    for number, line in enumerate(trace_text.splitlines(), start=1):
        match = _STRACE_LINE.match(line)
        if not match or int(match.group(1)) != pid:
            continue
        rest = match.group(3)
        if rest.startswith("futex(") and ("<unfinished ...>" in rest or re.search(r"\)\s+=\s+\?", rest)):
            before = recent[-context:]
        recent.append(line)
        if rest.startswith("futex(") and "<unfinished ...>" in rest:
            last, finished_after, ended = (number, match), False, ""
        elif rest.startswith("futex(") and re.search(r"\)\s+=\s+\?", rest):
            last, finished_after, ended = (number, match), False, "= ? (never returned)"
        elif rest.startswith("futex(") and re.search(r"\)\s+=\s+", rest):
            last, finished_after = None, True  # a futex call that returned
        elif last is not None and rest.startswith("<... futex resumed>"):
            result = rest.rsplit("=", 1)[-1].strip()
            if result.startswith("?"):
                ended = "resumed = ? (never returned)"
            else:
                finished_after = True
        elif last is not None and rest.startswith("+++ killed by"):
            ended = rest.strip("+ ").strip()
        elif last is not None and rest.startswith("+++ exited"):
            ended = rest.strip("+ ").strip()
    if last is None or finished_after:
        return None
    number, match = last
    return UnfinishedCall(pid=pid, time=match.group(2), line=match.group(0), line_number=number,
                          ended=ended or "still in progress when the trace ended", before=before)
