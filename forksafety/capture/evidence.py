"""What the OS shows about a stuck child (state, wchan, syscall, futex, threads lost
in the fork), and the crash_dumps files it is written to.

Part of ``forksafety.capture``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import psutil

from .. import procinfo
from ..origins import load_origins
from ..versions import header_lines
from ..watch import RULE_DEADLINE
from .tools import Section, python_stacks


# -- what the OS shows about a stuck child ----------------------------------------------------


def describe_snapshot(snap: procinfo.ProcSnapshot) -> list[str]:
    """Readable lines: state, wchan, CPU time, and each thread with its syscall."""
    lines = [f"pid {snap.pid} ({snap.name}): state {snap.state} ({snap.status}), wchan {snap.wchan}, "
             f"cpu {snap.cpu_seconds:.3f} s, {len(snap.threads)} thread(s)"]
    for t in snap.threads:
        call = t.syscall.describe() if t.syscall else "?"
        wait = f" [{t.syscall.wait} wait]" if t.syscall and t.syscall.wait != "none" else ""
        lines.append(f"  tid {t.tid:<8} {t.name:<16} state {t.state}  wchan {t.wchan or '-':<18} {call}{wait}")
    return lines


def futex_lines(pid: int, snap: procinfo.ProcSnapshot) -> list[str]:
    """The futex call of the main thread decoded, with the value now at its address."""
    call = snap.syscall
    if call is None or call.futex is None:
        return []
    f = call.futex
    now = procinfo.read_u32(pid, f["uaddr"])
    return [
        f"syscall {call.nr} = futex on {procinfo.MACHINE}: {call.describe()}",
        f"  operation {f['op_name']} (futex_op {hex(f['op'])}), private={f['private']}",
        f"  address {hex(f['uaddr'])}, expected value {f['val']}, value now {now if now is not None else '(unreadable)'}",
        f"  timeout {'NULL (waits forever)' if f['timeout'] == 0 else hex(f['timeout'])}",
    ]


def count_names(names: list[str]) -> str:
    """``python, sqlx-sqlite-wor x3, tokio-rt-worker x5`` (sorted, counted)."""
    counts: dict[str, int] = {}
    for name in sorted(names):
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()) or "(none)"


def explain_child(snap: procinfo.ProcSnapshot, lost: list[str], parent_word: str) -> list[str]:
    """Plain-language reading of the evidence, for the top of a capture file.

    Thread origins come from the known-origins table (threadorigins.json, one
    source per entry); the futex reading from futex(2).
    """
    lines = []
    n = len(snap.threads)
    lines.append(f"The child has {n} thread(s). fork(2) copies only the thread that calls fork(), so the "
                 f"child did not get these threads of the {parent_word}:")
    origins = load_origins()
    for name, count in sorted(Counter(lost).items()):
        entry = origins.for_thread_name(name)
        what = f"{entry.origin}; {entry.library}" if entry else "origin unknown"
        lines.append(f"  {count} x {name}: {what}")
    if not lost:
        lines.append("  (none)")
    if any(len(name) == 15 for name in lost):
        lines.append("  (Linux keeps at most 15 bytes of a thread name: longer names appear cut, "
                     "e.g. sqlx-sqlite-worker as sqlx-sqlite-wor.)")
    call = snap.syscall
    if call is not None and call.futex is not None:
        f = call.futex
        lines.append(f"Its main thread sleeps in the kernel (wchan {snap.wchan}: the kernel function it waits in) "
                     f"inside futex(2) {f['op_name']}: it waits until another thread changes the 32-bit word at "
                     f"{hex(f['uaddr'])} from {f['val']} and wakes it.")
        if f["private"]:
            lines.append("The futex is private: only a thread of this same process can wake it.")
        if f["timeout"] == 0:
            lines.append("There is no timeout: the wait ends only when it is woken.")
        if n == 1 and f["private"] and call.wait == "untimed":
            lines.append("The child has no other thread, so nothing can ever wake it: a proven deadlock. "
                         "The task will never finish.")
    elif call is not None:
        lines.append(f"Its main thread is in {call.describe()} ({call.wait} wait).")
    return lines


def child_evidence(child_pid: int, snap: procinfo.ProcSnapshot, parent_names: list[str],
                   parent_pid: int, parent_label: str = "parent", child_label: str = "child",
                   stacks: bool = True, parent_word: str = "parent",
                   lost: list[str] | None = None) -> tuple[list[Section], dict]:
    """Evidence from a hung forked child, before anyone stops it.

    parent_names: the parent's thread names (comm), ideally recorded just before
    the fork. Compares them with the child's (the threads lost in the fork:
    fork(2) copies only the calling thread). With ``stacks``, adds py-spy and
    pystack stacks (each bounded by TOOL_TIMEOUT seconds).

    Returns (sections for a crash_dumps file, evidence dict): lost_threads,
    syscall (one line), futex (decoded dict with ``value_now``, or None), state,
    wchan, top_python_frame, child_threads, parent_threads (counts), summary.
    Raises nothing for a child that vanished meanwhile (the tools then fail and
    say so in their sections).
    """
    child_names = [t.name for t in snap.threads]
    lost = sorted(lost) if lost is not None else procinfo.lost_threads(parent_names, child_names)
    sections: list[Section] = [
        ("what this means", explain_child(snap, lost, parent_word)),
        (f"{child_label} process", describe_snapshot(snap)),
        (f"threads: {parent_label} vs {child_label}",
         [f"{parent_label} (pid {parent_pid}): {len(parent_names)} threads: {', '.join(sorted(parent_names))}",
          f"{child_label} (pid {child_pid}): {len(child_names)} threads: {', '.join(sorted(child_names))}",
          f"lost in the fork: {', '.join(lost) or '(none)'}"]),
    ]
    fut = futex_lines(child_pid, snap)
    futex = None
    if fut:
        sections.append(("current syscall (futex)", fut))
        futex = dict(snap.syscall.futex)
        futex["value_now"] = procinfo.read_u32(child_pid, futex["uaddr"])
    fds = procinfo.fd_table(child_pid)
    if fds:
        sections.append(("file descriptors (/proc/<pid>/fd)", [f"  {fd:>4} -> {target}" for fd, target in fds]))
    top = None
    if stacks:
        stack_sections, top = python_stacks(child_pid)
        sections += stack_sections
    syscall = snap.syscall.describe() if snap.syscall else None
    summary = f"{len(child_names)} thread(s) in the child vs {len(parent_names)} in the {parent_word}"
    if syscall:
        summary += f"; blocked in {syscall}"
    evidence = {"lost_threads": lost, "syscall": syscall, "futex": futex, "state": snap.state,
                "wchan": snap.wchan, "top_python_frame": top, "child_threads": len(child_names),
                "parent_threads": len(parent_names), "summary": summary}
    return sections, evidence


# -- crash_dumps files ------------------------------------------------------------------------


def dump_path(log_dir: Path, kind: str, scenario: str, suffix: str = "log") -> Path:
    """``<log_dir>/<kind>_<scenario>_<UTC timestamp>.<suffix>`` (scenario may be empty)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{int(time.time() * 1000) % 1000:03d}"
    middle = f"_{scenario}" if scenario else ""
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{kind}{middle}_{stamp}.{suffix}"


def write_dump(path: Path, title: str, sections: list[Section],
               command: list[str] | None = None) -> Path:
    """Write a crash_dumps file: header, then ``== name ==`` sections."""
    out = header_lines(command, title)
    for name, body in sections:
        out += ["", f"== {name} =="]
        out += body.rstrip("\n").splitlines() if isinstance(body, str) else body
    path.write_text("\n".join(out) + "\n")
    return path


def hang_detail(rule: str, timeout: float, evidence: dict | None, reached: bool, where: str = "a pool child") -> str:
    """The one-line detail of a HANG verdict: for the ``deadline`` rule, how long we
    waited (and whether the work ever reached ``where``); for the other rules, the
    blocking syscall and the threads lost in the fork (from ``evidence``)."""
    if rule == RULE_DEADLINE:
        return f"no result after {timeout:g} s" + ("" if reached else f" (the task never reached {where})")
    lost = (evidence or {}).get("lost_threads") or []
    return f"{(evidence or {}).get('syscall') or 'blocked'}; lost in the fork: " + \
        (", ".join(f"{n}x {name}" for name, n in Counter(lost).items()) or "no thread")


def capture_forked_child(child_pid: int, parent_pid: int, snap: procinfo.ProcSnapshot, kind: str,
                         scenario: str, title: str, log_dir: Path, full: bool = True, verdict: str = "",
                         parent_label: str = "parent", child_label: str = "child",
                         parent_word: str = "parent") -> dict:
    """Capture a hung forked worker into ``crash_dumps/<kind>_<scenario>_<ts>.log``.

    Compares the child's threads with those of ``parent_pid`` (the process that
    forked it: the threads the child lost in the fork). With ``full``, adds py-spy
    and pystack stacks (each bounded by TOOL_TIMEOUT seconds). Returns the
    ``evidence`` summary: lost_threads, syscall, top_python_frame, log,
    child_threads, worker_threads (the parent's count), summary.
    """
    try:
        parent_names = procinfo.thread_names(parent_pid)
    except psutil.Error:
        parent_names = []
    sections, ev = child_evidence(child_pid, snap, parent_names, parent_pid, parent_label=parent_label,
                                  child_label=child_label, stacks=full, parent_word=parent_word)
    if verdict:
        sections.insert(0, ("verdict", [verdict]))
    path = write_dump(dump_path(log_dir, kind, scenario), title, sections)
    return {"lost_threads": ev["lost_threads"], "syscall": ev["syscall"],
            "top_python_frame": ev["top_python_frame"], "log": str(path),
            "child_threads": ev["child_threads"], "worker_threads": ev["parent_threads"],
            "summary": ev["summary"]}


def capture_celery_child(child_pid: int, worker_pid: int, snap: procinfo.ProcSnapshot, pool: str,
                         variant: str, log_dir: Path, full: bool = True, verdict: str = "") -> dict:
    """Capture a hung Celery pool child into ``crash_dumps/celery_<pool>_<variant>_<ts>.log``
    (``capture_forked_child`` with the worker main process as the parent)."""
    return capture_forked_child(child_pid, worker_pid, snap, "celery", f"{pool}_{variant}",
                                f"celery pool child capture ({pool}/{variant})", log_dir, full, verdict,
                                parent_label="worker main", child_label="pool child", parent_word="worker")
