"""``forksafety inspect PID``: is this process (a Celery pool child, any pid) stuck now, and why?

A product (layer 3) built on the mechanics: the hang rules and their verdict
(``forksafety.watch``: the one watch loop, ``watch_process``), what the OS says about the process
(``forksafety.procinfo``), the evidence and the capture file
(``forksafety.capture``), the known thread origins and their fixes
(``forksafety.origins``). Nothing here stops, signals or writes to
the inspected process: it is read through procfs; only py-spy and pystack
(when installed) attach with ptrace for the few milliseconds of their read,
then it goes on where it was.

Timing: ``deadlock-proven`` needs one look (one thread, an untimed private
futex wait: futex(2)), so a hung fork child is decided at once. ``stalled``
needs every thread in an untimed wait with no CPU progress for a window
(``window`` seconds, 1 by default), and so does calling a process healthy.

Waiting for input is not a hang: the ``stalled`` rule fires on any untimed
wait, but when the main thread waits on a file descriptor (read, recv, accept,
poll, select, epoll) another process can end the wait -- an idle server, a
Celery pool child waiting for its next task. Such a process is "not stuck",
with the descriptor named.

Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import capture, procinfo
from .errors import ProcessNotFoundError, PtraceError
from .origins import load_origins
from .watch import RULE_PROVEN, RULE_STALLED, pid_gone, watch_process

__all__ = ["Inspection", "NOT_STUCK", "inspect_pid", "check_inspectable", "write_capture"]

NOT_STUCK = "not-stuck"
SAMPLE_INTERVAL = 0.05  # seconds between two looks at the process
IO_WAITS = ("read", "recvfrom", "recvmsg", "accept", "accept4", "poll", "ppoll", "select", "pselect6",
            "epoll_wait", "epoll_pwait", "epoll_pwait2")  # syscalls whose first argument is a file descriptor
PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread
ROOT_REFUSED_HELP = ("the container or sandbox denies ptrace: in Docker add the SYS_PTRACE capability "
                     "(docker run --cap-add=SYS_PTRACE); a container's own init (pid 1) may stay refused")
NOT_TRACEABLE_HELP = ("run it as that process's user or as root (sudo forksafety inspect PID); in Docker add "
                      "the SYS_PTRACE capability (docker run --cap-add=SYS_PTRACE)")


@dataclass
class Inspection:
    """What ``inspect_pid`` found about one process.

    verdict: ``deadlock-proven`` or ``stalled`` (forksafety.watch rules), or ``not-stuck``.
    reason: one line saying why (the rule, or what shows the process is alive).
    observed_seconds: how long the process was watched (seconds).
    parent_pid / parent_threads: the parent's pid and thread names (None when it is
    gone or is init); lost: the parent's threads the process does not have (fork(2)
    copies only the calling thread); same_program: the parent runs the same
    executable and command line (a fork without exec, as Celery's prefork pool does).
    fixes: ``(thread name, origin, fix)`` for each recognised origin (threadorigins.json).
    want_stacks: ``write_capture`` runs py-spy and pystack.
    stacks: one line per stack tool: what it gave, or why it was skipped and the fix.
    top_frame: innermost Python frame of the main thread (py-spy / pystack) or None.
    capture_file: the crash_dumps file written (None until ``write_capture``).
    """

    pid: int
    name: str
    cmdline: str
    verdict: str
    reason: str
    snapshot: procinfo.ProcSnapshot
    observed_seconds: float
    parent_pid: int | None = None
    parent_threads: list[str] | None = None
    lost: list[str] = field(default_factory=list)
    same_program: bool = False
    futex: list[str] = field(default_factory=list)
    fixes: list[tuple[str, str, str]] = field(default_factory=list)
    want_stacks: bool = False
    stacks: list[str] = field(default_factory=list)
    top_frame: str | None = None
    capture_file: Path | None = None
    seconds: float = 0.0

    @property
    def stuck(self) -> bool:
        """True for ``deadlock-proven`` and ``stalled``."""
        return self.verdict != NOT_STUCK

    def to_dict(self) -> dict:
        """JSON-ready summary (the snapshot as its one-line description)."""
        return {"pid": self.pid, "name": self.name, "cmdline": self.cmdline, "verdict": self.verdict,
                "reason": self.reason, "observed_seconds": round(self.observed_seconds, 3),
                "parent_pid": self.parent_pid, "lost_threads": self.lost, "same_program": self.same_program,
                "threads": self.snapshot.thread_names, "futex": self.futex,
                "fixes": [{"thread": t, "origin": o, "fix": f} for t, o, f in self.fixes],
                "stacks": self.stacks, "top_python_frame": self.top_frame,
                "capture_file": str(self.capture_file) if self.capture_file else None,
                "seconds": round(self.seconds, 3)}


def check_inspectable(pid: int) -> psutil.Process:
    """The psutil.Process for ``pid``, once it is known that we may read its threads' syscalls.

    Raises ProcessNotFoundError (no such process, or a zombie: it has ended),
    PtraceError (a kernel thread, or ``/proc/<pid>/syscall`` refused: proc(5)
    allows it only to a process that may ptrace the target, PTRACE_MODE_ATTACH).
    """
    try:
        proc = psutil.Process(pid)
        status = proc.status()
        name = proc.name()
    except psutil.NoSuchProcess:
        raise ProcessNotFoundError(f"no process has pid {pid}",
                                   "give the pid of a running process (ps -eo pid,ppid,cmd | grep celery: "
                                   "a pool child's ppid is the worker's main process)") from None
    except psutil.AccessDenied:
        raise PtraceError(f"you may not inspect pid {pid}: the OS refused to show it", NOT_TRACEABLE_HELP) from None
    if status == psutil.STATUS_ZOMBIE:
        raise ProcessNotFoundError(f"pid {pid} ({name}) has ended (zombie): there is nothing left to inspect",
                                   "give the pid of a running process")
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            flags = int(stat.read_text().rsplit(")", 1)[1].split()[6])
        except (OSError, ValueError, IndexError):
            flags = 0
        if flags & PF_KTHREAD:
            raise PtraceError(f"pid {pid} ({name}) is a kernel thread: it runs no program that can be traced",
                              "give the pid of a user process (ps -eo pid,cmd)")
        try:
            Path(f"/proc/{pid}/syscall").read_bytes()
        except PermissionError:
            try:
                owner = proc.username()
            except psutil.Error:
                owner = "another user"
            if os.geteuid() == 0:
                # root and still refused: ptrace(2) is denied by the sandbox or container (no
                # CAP_SYS_PTRACE, a seccomp or LSM rule, or the target is the container's init)
                raise PtraceError(f"even root may not trace pid {pid} ({name}, user {owner}) here: "
                                  f"/proc/{pid}/syscall is refused", ROOT_REFUSED_HELP) from None
            raise PtraceError(f"you may not trace pid {pid} ({name}, user {owner}): /proc/{pid}/syscall is "
                              "readable only by a process allowed to ptrace it", NOT_TRACEABLE_HELP) from None
        except FileNotFoundError:
            raise ProcessNotFoundError(f"pid {pid} ended while it was inspected",
                                       "it is not stuck any more; if it hangs again, inspect the new pid") from None
    return proc


def _io_wait(pid: int, snap: procinfo.ProcSnapshot) -> str | None:
    """``read(fd 5 -> pipe:[123])`` when the main thread waits on a file descriptor, else None."""
    call = snap.syscall
    if call is None or call.name not in IO_WAITS or call.wait != "untimed" or not call.args:
        return None
    fd = call.args[0]
    target = dict(procinfo.fd_table(pid)).get(fd, "?")
    return f"{call.name}(fd {fd} -> {target})"


def _parent(proc: psutil.Process) -> tuple[int | None, list[str] | None, bool]:
    """(parent pid, its thread names, same program) or (None, None, False) when the parent
    is gone or is init (an orphan's threads cannot be compared)."""
    try:
        ppid = proc.ppid()
        if ppid <= 1:
            return None, None, False
        parent = psutil.Process(ppid)
        names = procinfo.thread_names(ppid)
        same = parent.exe() == proc.exe() and parent.cmdline() == proc.cmdline()
        return ppid, names, same
    except (psutil.Error, OSError):
        return None, None, False


def _not_stuck_reason(pid: int, first: procinfo.ProcSnapshot, last: procinfo.ProcSnapshot,
                      window: float) -> str:
    """Why the hang rules did not fire: CPU progress, a wait that ends by itself, or waiting for input."""
    cpu = last.cpu_seconds - first.cpu_seconds
    if cpu > 0:
        return f"it is running: {cpu:.3f} s of CPU in the {window:g} s it was watched"
    timed = [t for t in last.threads if t.syscall is not None and t.syscall.wait == "timed"]
    if timed:
        t = timed[0]
        return f"thread {t.name} (tid {t.tid}) waits with a timeout in {t.syscall.describe()}: the wait ends by itself"
    awake = [t for t in last.threads if t.state not in ("S", "D")]
    if awake:
        return f"thread {awake[0].name} (tid {awake[0].tid}) is not asleep (state {awake[0].state})"
    io = _io_wait(pid, last)
    if io:
        return f"it is idle, waiting for input in {io}: another process can end that wait"
    return f"the hang rules did not fire within {window:g} s"


def inspect_pid(pid: int, window: float = 1.0, stacks: str = "auto") -> Inspection:
    """Look at ``pid`` (never stopping or changing it) and decide whether it is stuck.

    window: seconds the ``stalled`` rule needs (and that a healthy process is watched);
    a ``deadlock-proven`` process is decided on the first look.
    stacks: "auto" (py-spy / pystack stacks when stuck), "always", "never".
    Raises ProcessNotFoundError or PtraceError (see ``check_inspectable``).
    """
    started = time.monotonic()
    proc = check_inspectable(pid)
    first = _snapshot(pid)
    watched = watch_process(lambda: "ended" if pid_gone(pid) else None, pid,
                            deadline=time.monotonic() + window + 2 * SAMPLE_INTERVAL, stall=window,
                            interval=SAMPLE_INTERVAL)
    if not watched.hung:  # the process ended while it was watched
        raise ProcessNotFoundError(f"pid {pid} ended while it was inspected", "")
    observed = watched.seconds
    snap = watched.snapshot or first
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        cmdline = ""
    if watched.rule == RULE_PROVEN:
        verdict = RULE_PROVEN
        reason = ("its only thread waits on a private futex with no timeout: no other thread exists to wake it "
                  "(futex(2)); it can never go on")
    elif watched.rule == RULE_STALLED and _io_wait(pid, snap) is None:
        verdict = RULE_STALLED
        reason = (f"every thread has waited with no timeout and no CPU progress for {window:g} s "
                  f"({len(snap.threads)} thread(s)); strong evidence, not a proof")
    else:
        verdict, reason = NOT_STUCK, _not_stuck_reason(pid, first, snap, window)
    ppid, parent_names, same = _parent(proc)
    result = Inspection(pid=pid, name=snap.name, cmdline=cmdline, verdict=verdict, reason=reason, snapshot=snap,
                        observed_seconds=observed, parent_pid=ppid, parent_threads=parent_names, same_program=same)
    if parent_names is not None and same:  # a fork without exec: the parent's other threads were not copied
        result.lost = procinfo.lost_threads(parent_names, snap.thread_names)
    result.futex = capture.futex_lines(pid, snap)
    if result.lost or result.stuck:
        result.fixes = _fixes(result.lost or snap.thread_names)
    result.want_stacks = stacks == "always" or (stacks == "auto" and result.stuck)
    result.seconds = time.monotonic() - started
    return result


def _snapshot(pid: int) -> procinfo.ProcSnapshot:
    try:
        return procinfo.snapshot(pid)
    except psutil.NoSuchProcess:
        raise ProcessNotFoundError(f"pid {pid} ended while it was inspected", "") from None
    except psutil.AccessDenied:
        raise PtraceError(f"you may not inspect pid {pid}", NOT_TRACEABLE_HELP) from None


def _fixes(names: list[str]) -> list[tuple[str, str, str]]:
    """``(thread name, origin, fix)`` for the distinct origins of ``names`` (threadorigins.json)."""
    origins = load_origins()
    out, seen = [], set()
    for name in sorted(Counter(names)):
        entry = origins.for_thread_name(name)
        if entry is not None and entry.fix not in seen:
            seen.add(entry.fix)
            out.append((name, entry.origin, entry.fix))
    return out


def _stack_lines(sections: list[capture.Section]) -> list[str]:
    """One line per stack tool: ``py-spy: recorded`` when one of its runs succeeded (capture.python_stacks
    retries py-spy without --native), else why it gave nothing, with the fix."""
    lines: dict[str, str] = {}
    for title, body in sections:
        tool = title.split(":", 1)[0]
        text = body if isinstance(body, str) else "\n".join(body)
        if title.endswith("(exit 0)"):
            frames = "Python and native frames" if "--native" in title else "Python frames"
            lines[tool] = f"{tool}: recorded ({frames}) in the capture file"
            continue
        if tool in lines and "recorded" in lines[tool]:
            continue
        refused = capture.ptrace_refusal(text, tool)
        if refused is not None:
            lines[tool] = f"{tool}: skipped: {refused}"
        elif "is not installed" in text:
            lines[tool] = f"{tool}: skipped: not installed: pip install 'forksafety[stack]'"
        else:
            lines[tool] = f"{tool}: failed: {capture.last_line(text)[:200]}"
    return list(lines.values())


def write_capture(result: Inspection, log_dir: Path, command: list[str] | None = None) -> Path:
    """Write the capture file the harness writes (``capture.child_evidence`` sections,
    ``capture.write_dump``) to ``<log_dir>/inspect_pid<PID>_<time>.log``, with py-spy and
    pystack stacks when ``result`` asked for them (each tool bounded by capture.TOOL_TIMEOUT
    seconds; skipped with the reason when ptrace is refused). Sets ``result.stacks``,
    ``result.top_frame`` and ``result.capture_file``; returns the path. Raises OSError
    when ``log_dir`` cannot be written."""
    want_stacks = result.want_stacks
    if want_stacks:
        try:
            capture.check_ptrace_allowed()
        except PtraceError as exc:
            want_stacks = False
            result.stacks = [f"stacks skipped: {exc}"]
    sections, evidence = capture.child_evidence(
        result.pid, result.snapshot, result.parent_threads or [], result.parent_pid or 0,
        parent_label="parent", child_label="inspected process", stacks=want_stacks,
        parent_word="parent", lost=result.lost)
    if want_stacks:
        tool_sections = [s for s in sections if s[0].startswith(("py-spy:", "pystack:"))]
        result.stacks = _stack_lines(tool_sections)
        result.top_frame = evidence.get("top_python_frame")
    head = [f"{result.verdict}: {result.reason}"]
    if result.fixes:
        head += [f"fix ({name}: {origin}): {fix}" for name, origin, fix in result.fixes]
    sections.insert(0, ("verdict", head))
    log_dir.mkdir(parents=True, exist_ok=True)
    path = capture.write_dump(capture.dump_path(log_dir, "inspect", f"pid{result.pid}"),
                              f"inspect of pid {result.pid} ({result.name})", sections, command)
    result.capture_file = path
    return path

