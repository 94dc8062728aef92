"""Running external tools (py-spy, pystack, debuggers) bounded, in their own process
group, stopped with that group on timeout or interrupt; Python stacks; ptrace checks.

Part of ``forksafety.capture``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PtraceError, ToolMissingError
from ..watch import OWNER_ENV, pdeathsig_preexec, stop_group

TOOL_TIMEOUT = 20.0  # seconds any one external tool may take
DEBUGGER_TIMEOUT = 60.0  # seconds gdb / lldb may take to attach, print and detach
KILL_GRACE = 2.0  # seconds a tool's process group gets after SIGTERM before SIGKILL

Section = tuple[str, "list[str] | str"]


# -- running tools ------------------------------------------------------------------------


@dataclass
class ToolOutput:
    """What an external tool printed: its command, exit code (None: timed out or missing).

    pid: the tool's process id (None when it could not be started).
    """

    command: list[str]
    returncode: int | None
    output: str
    pid: int | None = None

    def ok(self) -> bool:
        """True when the tool ran and exited 0."""
        return self.returncode == 0


def tool_available(command0: str) -> bool:
    """True when ``command0`` is an existing path or a program on PATH."""
    return shutil.which(command0) is not None or Path(command0).is_file()



def run_tool(command: list[str], timeout: float = TOOL_TIMEOUT,
             on_start: Callable[[int], None] | None = None, capture: bool = True,
             cwd: Path | None = None, env: dict[str, str] | None = None) -> ToolOutput:
    """Run ``command`` with a timeout (seconds); never raises for a missing or failing tool.

    The tool runs in a new session (its own process group) with PR_SET_PDEATHSIG
    (prctl(2)), so it dies with the caller. On timeout, and on any exception
    while waiting (e.g. ``forksafety.cli.Interrupted`` from Ctrl-C), the whole
    group gets SIGTERM, then SIGKILL after ``KILL_GRACE`` seconds; the exception
    is re-raised. stderr is merged into stdout (the order the tool wrote them).

    on_start: called with the tool's pid once it runs (to print or record it).
    env: the tool's environment (default: ours), always with ``watch.OWNER_ENV`` set to
    our pid, so that what it leaves behind after we are killed can be swept.
    capture: False lets the tool write to our stdout/stderr (``output`` is then "").
    """
    if not tool_available(command[0]):
        return ToolOutput(command, None, f"{command[0]} is not installed")
    pipe = subprocess.PIPE if capture else None
    # Tag the tool and all it starts with our pid: a process the tool leaves behind when
    # we are SIGKILLed (PR_SET_PDEATHSIG reaches the tool only, not what it forked, e.g.
    # gdb's `shell CMD &`) is then found and stopped by a later run (watch.sweep_orphans).
    env = {**(os.environ if env is None else env), OWNER_ENV: str(os.getpid())}
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=pipe,
                                stderr=subprocess.STDOUT if capture else None, text=True,
                                errors="replace", start_new_session=True, cwd=cwd, env=env,
                                preexec_fn=pdeathsig_preexec())
    except OSError as exc:
        return ToolOutput(command, None, f"{command[0]} could not be started: {exc.strerror or exc}")
    try:
        if on_start is not None:
            on_start(proc.pid)
        out = _communicate_until_exit(proc, timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, grace=KILL_GRACE)
        try:
            out, _ = proc.communicate(timeout=5)
        except (subprocess.TimeoutExpired, ValueError):
            out = ""
        return ToolOutput(command, None, (out or "") + f"\n[timed out after {timeout:g} s: stopped]", proc.pid)
    except BaseException:
        stop_group(proc, grace=KILL_GRACE)
        raise
    if _group_left(proc.pid):  # the tool finished; what it started in its group is ours to stop too
        stop_group(proc, grace=KILL_GRACE)
    return ToolOutput(command, proc.returncode, out or "", proc.pid)


def _group_left(pgid: int) -> bool:
    """True while process group ``pgid`` has a member (kill(2) with signal 0)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _communicate_until_exit(proc: subprocess.Popen, timeout: float) -> str:
    """``proc.communicate`` bounded by ``timeout`` seconds that also ends when the tool has
    exited but something it started (gdb's ``shell CMD &``) still holds the output pipe open:
    that group is stopped, and what was written is read. Raises TimeoutExpired at the deadline
    (communicate keeps the output read so far for the next call: subprocess docs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, _ = proc.communicate(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            return out
        except subprocess.TimeoutExpired:
            if proc.poll() is not None:
                stop_group(proc, grace=KILL_GRACE)
                out, _ = proc.communicate(timeout=5)
                return out
            if time.monotonic() >= deadline:
                raise


def tool_path(name: str) -> str:
    """A tool installed in this Python's environment (py-spy, pystack), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def py_spy_dump(pid: int, native: bool = True) -> ToolOutput:
    """``py-spy dump --pid PID [--native]`` (py-spy README: dumps every thread's stack)."""
    cmd = [tool_path("py-spy"), "dump", "--pid", str(pid)]
    if native:
        cmd.append("--native")
    return run_tool(cmd)


def pystack_remote(pid: int, native: bool = True) -> ToolOutput:
    """``pystack remote PID [--native]`` (pystack docs; Linux only)."""
    cmd = [tool_path("pystack"), "remote", str(pid)]
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


_PYSTACK_FRAME = re.compile(r'^\s*\(Python\) File "([^"]+)", line (\d+), in (\S+)')


def top_python_frame_pystack(pystack_text: str) -> str | None:
    """The innermost Python frame of the first thread in pystack's output (pystack
    prints the most recent call last), as ``func (file:line)``."""
    last = None
    for line in pystack_text.splitlines():
        if line.startswith("Traceback for thread") and last is not None:
            break
        match = _PYSTACK_FRAME.match(line)
        if match:
            last = f"{match.group(3)} ({match.group(1)}:{match.group(2)})"
    return last


def python_stacks(pid: int) -> tuple[list[Section], str | None]:
    """Python stacks of ``pid`` with native frames, each tool bounded by TOOL_TIMEOUT.

    py-spy ``dump --native`` first; when its native unwinding fails (it does for
    some stripped Rust extensions: "UNW_EINVAL"), py-spy without ``--native``;
    then pystack ``remote --native`` on Linux. Returns the sections and the
    innermost Python frame found (or None).
    """
    sections: list[Section] = []
    spy = py_spy_dump(pid)
    top = top_python_frame(spy.output) if spy.ok() else None
    sections.append((f"py-spy: {' '.join(spy.command)} (exit {spy.returncode})", spy.output))
    if not spy.ok() and spy.returncode is not None:
        failed = spy
        spy = py_spy_dump(pid, native=False)
        top = top_python_frame(spy.output) if spy.ok() else None
        if spy.ok():  # keep the failed attempt to one line: its Rust backtrace is py-spy's, not the bug's
            reason = next((ln.strip() for ln in failed.output.splitlines() if "UNW_" in ln or ln.startswith("Error")),
                          "see py-spy")
            sections[-1] = (f"py-spy: {' '.join(failed.command)} (exit {failed.returncode})",
                            f"py-spy could not unwind the native frames this time ({reason}); this is "
                            "py-spy's own failure, not part of the hang. Retried without --native below.")
        sections.append((f"py-spy: {' '.join(spy.command)} (exit {spy.returncode})", spy.output))
    if sys.platform.startswith("linux"):
        stack = pystack_remote(pid)
        if top is None and stack.ok():
            top = top_python_frame_pystack(stack.output)
        note = ("(Oldest frame first. The frames before the task are the code that was running when the "
                "process forked: a forked child keeps the stack of the thread that called fork().)\n")
        sections.append((f"pystack: {' '.join(stack.command)} (exit {stack.returncode})",
                         (note if stack.ok() else "") + stack.output))
    return sections, top


# -- ptrace permission ------------------------------------------------------------------------

PTRACE_HELP = ("run as root, or allow ptrace of child processes with "
               "`sysctl -w kernel.yama.ptrace_scope=0` (or 1), or in Docker add the SYS_PTRACE "
               "capability (`docker run --cap-add=SYS_PTRACE`, compose: `cap_add: [SYS_PTRACE]`)")
CAP_SYS_PTRACE = 19  # capabilities(7)

_PTRACE_REFUSED = re.compile(
    r"ptrace: Operation not permitted|Could not attach to process|attach failed: .*(?:not permitted|"
    r"Operation not permitted)|PTRACE_ATTACH.*(?:EPERM|Operation not permitted)|"
    r"Not allowed to attach to process",
    re.IGNORECASE)


def ptrace_scope() -> int | None:
    """``kernel.yama.ptrace_scope`` (0 classic, 1 descendants only, 2 CAP_SYS_PTRACE only,
    3 no attach), from /proc/sys/kernel/yama/ptrace_scope; None without Yama."""
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip())
    except (OSError, ValueError):
        return None


def has_cap_sys_ptrace() -> bool:
    """True when this process has CAP_SYS_PTRACE in its effective set (/proc/self/status CapEff)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def check_ptrace_allowed() -> None:
    """Raise PtraceError when Yama already says no (ptrace(2), Yama docs:
    scope 3 forbids every attach, scope 2 needs CAP_SYS_PTRACE). Scope 0/1 allow
    attaching to our own child; other refusals (seccomp, containers) are found
    from the debugger's output by ``ptrace_refusal``."""
    scope = ptrace_scope()
    if scope == 3:
        raise PtraceError("ptrace is not permitted: kernel.yama.ptrace_scope is 3 (no process may attach "
                          "until reboot)", PTRACE_HELP)
    if scope == 2 and not has_cap_sys_ptrace():
        raise PtraceError("ptrace is not permitted: kernel.yama.ptrace_scope is 2 and this process lacks "
                          "CAP_SYS_PTRACE", PTRACE_HELP)


def ptrace_refusal(output: str, tool: str) -> PtraceError | None:
    """A PtraceError when a debugger's ``output`` says the attach was refused, else None."""
    match = _PTRACE_REFUSED.search(output)
    if match is None:
        return None
    return PtraceError(f"ptrace is not permitted: {tool} could not attach ({match.group(0).strip()})",
                       PTRACE_HELP)


def require_tool(path: str, name: str, install: str) -> None:
    """Raise ToolMissingError naming the install command when ``path`` is not runnable."""
    if not tool_available(path):
        raise ToolMissingError(f"{name} is not installed (looked for {path!r})", install)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (a tool's error message), or ""."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("[timed out")]
    return lines[-1] if lines else ""


def not_runnable(name: str, out: ToolOutput, fix: str) -> ToolMissingError:
    """The error for a tool that could not be started: the OS's reason, one line."""
    reason = out.output.strip().split(": ", 1)[-1] if out.output else "unknown reason"
    return ToolMissingError(f"could not run {name} ({out.command[0]}): {reason}", fix)


def check_tool_runs(command: list[str], name: str, fix: str, timeout: float = 10.0) -> None:
    """Run ``command`` (a harmless use of the tool: ``gdb --version``, ``strace -o /dev/null true``)
    bounded by ``timeout`` seconds; raise ToolMissingError (PtraceError when it says
    ptrace is refused) with the tool's own reason when it cannot be started, does
    not finish, or exits non-zero. A set-up check, before anything is started."""
    out = run_tool(command, timeout=timeout)
    if out.pid is None:
        raise not_runnable(name, out, fix)
    if out.returncode is None:
        raise ToolMissingError(f"could not run {name} ({command[0]}): `{' '.join(command)}` did not finish "
                               f"within {timeout:g} s (stopped it)", fix)
    if out.returncode != 0:
        low = out.output.lower()
        if "ptrace" in low and ("not permitted" in low or "eperm" in low):
            raise PtraceError(f"ptrace is not permitted: {name} says {last_line(out.output)!r}", PTRACE_HELP)
        said = last_line(out.output)
        raise ToolMissingError(f"could not run {name} ({command[0]}): `{' '.join(command)}` exited "
                               f"{out.returncode}" + (f": {said}" if said else ""), fix)


