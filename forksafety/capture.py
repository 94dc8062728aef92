"""Evidence from a stuck process, written to ``crash_dumps/``: the Python stack
with native frames (py-spy ``dump --native``, pystack ``remote --native``), the
threads it has against the ones its parent has, state, wchan and the decoded
current syscall (``forksafety.procinfo``).

Every file starts with the header of ``forksafety.versions.header_lines`` and
carries a timestamp and the scenario in its name. Every external tool runs
with a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import procinfo
from .versions import header_lines

TOOL_TIMEOUT = 20.0  # seconds any one external tool may take


@dataclass
class ToolOutput:
    """What an external tool printed: its command, exit code (None: timed out or missing)."""

    command: list[str]
    returncode: int | None
    output: str

    def ok(self) -> bool:
        """True when the tool ran and exited 0."""
        return self.returncode == 0


def run_tool(command: list[str], timeout: float = TOOL_TIMEOUT) -> ToolOutput:
    """Run ``command`` with a timeout; never raises for a missing or failing tool."""
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        return ToolOutput(command, None, f"{command[0]} is not installed")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return ToolOutput(command, None, out + f"\n[timed out after {timeout:g} s]")
    return ToolOutput(command, done.returncode, (done.stdout or "") + (done.stderr or ""))


def _tool_path(name: str) -> str:
    """A tool installed in this Python's environment (py-spy, pystack), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def py_spy_dump(pid: int, native: bool = True) -> ToolOutput:
    """``py-spy dump --pid PID [--native]`` (py-spy README: dumps every thread's stack)."""
    cmd = [_tool_path("py-spy"), "dump", "--pid", str(pid)]
    if native:
        cmd.append("--native")
    return run_tool(cmd)


def pystack_remote(pid: int, native: bool = True) -> ToolOutput:
    """``pystack remote PID [--native]`` (pystack docs; Linux only)."""
    cmd = [_tool_path("pystack"), "remote", str(pid)]
    if native:
        cmd.append("--native")
    return run_tool(cmd)


def top_python_frame(py_spy_text: str) -> str | None:
    """The innermost Python frame of the first thread in py-spy's dump, e.g.
    ``add_documents_task (celery_examples/tasks_pool_test.py:41)``."""
    in_thread = False
    for line in py_spy_text.splitlines():
        if line.startswith("Thread "):
            if in_thread:
                break
            in_thread = True
            continue
        text = line.strip()
        if in_thread and text and ".py:" in text and not text.startswith("Thread"):
            return text
    return None


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


def dump_path(log_dir: Path, kind: str, scenario: str, suffix: str = "log") -> Path:
    """``<log_dir>/<kind>_<scenario>_<UTC timestamp>.<suffix>`` (scenario may be empty)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{int(time.time() * 1000) % 1000:03d}"
    middle = f"_{scenario}" if scenario else ""
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{kind}{middle}_{stamp}.{suffix}"


def write_dump(path: Path, title: str, sections: list[tuple[str, list[str] | str]],
               command: list[str] | None = None) -> Path:
    """Write a crash_dumps file: header, then ``== name ==`` sections."""
    out = header_lines(command, title)
    for name, body in sections:
        out += ["", f"== {name} =="]
        out += body.rstrip("\n").splitlines() if isinstance(body, str) else body
    path.write_text("\n".join(out) + "\n")
    return path


def capture_celery_child(child_pid: int, worker_pid: int, snap: procinfo.ProcSnapshot, pool: str,
                         variant: str, log_dir: Path, full: bool = True) -> dict:
    """Capture a hung Celery pool child into ``crash_dumps/celery_<pool>_<variant>_<ts>.log``.

    Compares the child's threads with the worker main process's (the threads
    the child lost in the fork). With ``full``, adds py-spy and pystack stacks
    (each bounded by TOOL_TIMEOUT seconds). Returns the ``evidence`` summary:
    lost_threads, syscall, top_python_frame, log, summary.
    """
    try:
        worker_names = procinfo.thread_names(worker_pid)
    except psutil.Error:
        worker_names = []
    child_names = [t.name for t in snap.threads]
    lost = procinfo.lost_threads(worker_names, child_names)
    sections: list[tuple[str, list[str] | str]] = [
        ("child process", describe_snapshot(snap)),
        ("threads: worker main process vs pool child",
         [f"worker main (pid {worker_pid}): {len(worker_names)} threads: {', '.join(sorted(worker_names))}",
          f"pool child  (pid {child_pid}): {len(child_names)} threads: {', '.join(sorted(child_names))}",
          f"lost in the fork: {', '.join(lost) or '(none)'}"]),
    ]
    fut = futex_lines(child_pid, snap)
    if fut:
        sections.append(("current syscall (futex)", fut))
    top = None
    if full:
        spy = py_spy_dump(child_pid)
        top = top_python_frame(spy.output) if spy.ok() else None
        sections.append((f"py-spy: {' '.join(spy.command)} (exit {spy.returncode})", spy.output))
        if sys.platform.startswith("linux"):
            stack = pystack_remote(child_pid)
            sections.append((f"pystack: {' '.join(stack.command)} (exit {stack.returncode})", stack.output))
    path = write_dump(dump_path(log_dir, "celery", f"{pool}_{variant}"), f"celery pool child capture ({pool}/{variant})", sections)
    syscall = snap.syscall.describe() if snap.syscall else None
    summary = f"{len(child_names)} thread(s) in the child vs {len(worker_names)} in the worker"
    if syscall:
        summary += f"; blocked in {syscall}"
    return {"lost_threads": lost, "syscall": syscall, "top_python_frame": top, "log": str(path),
            "child_threads": len(child_names), "worker_threads": len(worker_names), "summary": summary}
