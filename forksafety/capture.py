"""Evidence from a stuck (or crashing) process, written to ``crash_dumps/``.

One implementation for every entry point (the Celery runner, ``scripts/demo_crash.py``,
``scripts/gdb_attach_child.py``, ``scripts/lldb_attach_child.py``):

* what the OS shows (``forksafety.procinfo``): state, wchan, the decoded current
  syscall, the threads the child has against the ones its parent had
  (``child_evidence``);
* Python stacks with native frames: py-spy ``dump --native``, pystack ``remote --native``;
* debuggers: gdb (``gdb_capture``: threads, native backtraces, py-bt, registers,
  the futex call decoded from the registers for the running architecture), lldb
  (``lldb_capture`` on a stuck process, ``lldb_catch`` for a crash such as
  macOS's SIGTRAP / EXC_BREAKPOINT);
* strace: ``strace_command`` and ``find_unfinished_futex`` (the child's last,
  never-finished futex call in a ``strace -f -tt`` trace).

Every file starts with the header of ``forksafety.versions.header_lines`` and
carries a timestamp and the scenario in its name. Every external tool runs
with a timeout, in its own process group, and is killed with that whole group
when the timeout passes or the caller is interrupted (``run_tool``).

Importing this module starts no thread and opens no connection.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import procinfo
from .errors import PtraceError, ToolMissingError
from .origins import load_origins
from .versions import header_lines
from .watch import group_alive, pdeathsig_preexec

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



def stop_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """Stop ``proc`` and every process of its process group (it leads one: started
    with ``start_new_session``): SIGTERM, up to ``grace`` seconds, then SIGKILL.
    Reaps ``proc`` (bounded, 5 s). Never raises for processes already gone."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not group_alive(pgid):
                return
            time.sleep(0.02)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


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
    capture: False lets the tool write to our stdout/stderr (``output`` is then "").
    """
    if not tool_available(command[0]):
        return ToolOutput(command, None, f"{command[0]} is not installed")
    pipe = subprocess.PIPE if capture else None
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
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        try:
            out, _ = proc.communicate(timeout=5)
        except (subprocess.TimeoutExpired, ValueError):
            out = ""
        return ToolOutput(command, None, (out or "") + f"\n[timed out after {timeout:g} s: stopped]", proc.pid)
    except BaseException:
        stop_group(proc)
        raise
    return ToolOutput(command, proc.returncode, out or "", proc.pid)


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


def capture_celery_child(child_pid: int, worker_pid: int, snap: procinfo.ProcSnapshot, pool: str,
                         variant: str, log_dir: Path, full: bool = True, verdict: str = "") -> dict:
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
    sections, ev = child_evidence(child_pid, snap, worker_names, worker_pid,
                                  parent_label="worker main", child_label="pool child", stacks=full,
                                  parent_word="worker")
    if verdict:
        sections.insert(0, ("verdict", [verdict]))
    path = write_dump(dump_path(log_dir, "celery", f"{pool}_{variant}"),
                      f"celery pool child capture ({pool}/{variant})", sections)
    return {"lost_threads": ev["lost_threads"], "syscall": ev["syscall"],
            "top_python_frame": ev["top_python_frame"], "log": str(path),
            "child_threads": ev["child_threads"], "worker_threads": ev["parent_threads"],
            "summary": ev["summary"]}


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


# -- registers and the syscall ABI ----------------------------------------------------------------


@dataclass(frozen=True)
class SyscallABI:
    """Where a stopped thread's syscall number and arguments are, per architecture.

    From syscall(2) "Architecture calling conventions": x86_64 puts the number
    in rax and the arguments in rdi, rsi, rdx, r10, r8, r9; aarch64 the number
    in x8 and the arguments in x0..x5.

    nr: register with the syscall number at a ptrace stop. x86_64: ``orig_rax``
      (rax already holds the return value: -512 = -ERESTARTSYS when the wait was
      interrupted by the debugger's SIGSTOP, arch/x86/kernel/signal.c restarts it
      only after the stop). aarch64: ``x8``; before the stop the kernel already
      put the first argument back in x0 (orig_x0) and rewound pc to the ``svc``
      for the restart ("so that a debugger will see the already changed PC",
      arch/arm64/kernel/signal.c do_signal), so x0..x5 are the arguments.
    """

    machine: str
    nr: str
    args: tuple[str, ...]
    ret: str
    pc: str


SYSCALL_ABI: dict[str, SyscallABI] = {
    "x86_64": SyscallABI("x86_64", "orig_rax", ("rdi", "rsi", "rdx", "r10", "r8", "r9"), "rax", "rip"),
    "aarch64": SyscallABI("aarch64", "x8", ("x0", "x1", "x2", "x3", "x4", "x5"), "x0", "pc"),
}
SYSCALL_ABI["amd64"] = SYSCALL_ABI["x86_64"]
SYSCALL_ABI["arm64"] = SYSCALL_ABI["aarch64"]

# gdb ``info registers``: "rdi            0x5608aad7f400      94595226006528";
# lldb ``register read``: "       rdi = 0x000055cea4cba290".
_REGISTER = re.compile(r"^\s*([a-z][a-z0-9_]*)\s+(?:=\s*)?(0x[0-9a-fA-F]+)(?=\s|$)", re.MULTILINE)


def parse_registers(text: str) -> dict[str, int]:
    """Register values from gdb ``info registers`` or lldb ``register read`` text.

    Returns ``{name: value}`` (unsigned); the first value seen for a name wins.
    """
    regs: dict[str, int] = {}
    for name, value in _REGISTER.findall(text):
        regs.setdefault(name, int(value, 16))
    return regs


@dataclass
class RegisterSyscall:
    """A syscall decoded from a stopped thread's registers.

    call: the decoded syscall (``procinfo.Syscall``: name, args, futex fields).
    registers: ``{role: register name}`` used (nr, arg1..arg4).
    interrupted: True when the return register holds -ERESTARTSYS (-512) and the
      like: the debugger's stop interrupted the wait; the kernel restarts it on detach.
    value_now: the 32-bit value now at the futex address (None when unread).
    """

    machine: str
    call: procinfo.Syscall
    registers: dict[str, str]
    interrupted: bool = False
    value_now: int | None = None
    value_source: str = ""

    def lines(self) -> list[str]:
        """Readable decoding: number, operation, expected value, address, value now."""
        c = self.call
        r = self.registers
        out = [f"architecture {self.machine}: syscall number in {r['nr']}, arguments in "
               f"{', '.join(r[f'arg{i}'] for i in range(1, 5))} (syscall(2))",
               f"syscall number {c.nr} ({r['nr']}) = {c.name}: {c.describe()}"]
        if c.futex:
            f = c.futex
            out += [
                f"  futex operation  {r['arg2']} = {hex(f['op'])} -> {f['op_name']}"
                + (" (private: only a thread of this process can wake it)" if f["private"] else ""),
                f"  expected value   {r['arg3']} = {f['val']} (the kernel sleeps only while *uaddr == {f['val']})",
                f"  address          {r['arg1']} = {hex(f['uaddr'])}",
                f"  value now        {self.value_now if self.value_now is not None else '(unreadable)'}"
                + (f" ({self.value_source})" if self.value_source else "")
                + ("  -> unchanged: nobody released it" if self.value_now == f["val"] else ""),
                f"  timeout          {r['arg4']} = {hex(f['timeout'])}"
                + (" -> NULL: waits forever" if f["timeout"] == 0 else ""),
            ]
        if self.interrupted:
            out.append("  the return register holds -ERESTARTSYS (-512): the debugger's stop interrupted "
                       "the wait; the kernel restarts the same call on detach")
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"machine": self.machine, "nr": self.call.nr, "name": self.call.name,
                "describe": self.call.describe(), "futex": self.call.futex, "registers": self.registers,
                "interrupted": self.interrupted, "value_now": self.value_now}


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def decode_syscall_registers(regs: dict[str, int], machine: str = procinfo.MACHINE,
                             nr: int | None = None) -> RegisterSyscall | None:
    """Decode the syscall a stopped thread is in from its registers (``parse_registers``).

    machine: ``x86_64``/``amd64`` or ``aarch64``/``arm64`` (see SyscallABI).
    nr: the syscall number when the registers do not carry it (lldb on Linux
      x86_64 shows no orig_rax: take it from /proc/<pid>/syscall).
    Returns None for an unknown architecture or missing registers.
    """
    abi = SYSCALL_ABI.get(machine)
    if abi is None or any(a not in regs for a in abi.args[:4]):
        return None
    number = nr if nr is not None else regs.get(abi.nr)
    if number is None:
        return None
    raw = f"{number:#x} " + " ".join(hex(regs.get(a, 0)) for a in abi.args)
    call = procinfo.decode_syscall(raw, "aarch64" if abi.machine == "aarch64" else "x86_64")
    names = {"nr": abi.nr if nr is None else "/proc/<pid>/syscall"}
    names.update({f"arg{i + 1}": a for i, a in enumerate(abi.args)})
    interrupted = False
    if abi.machine == "x86_64" and abi.ret in regs:
        interrupted = _signed64(regs[abi.ret]) in (-512, -513, -514, -516)  # -ERESTART* (errno.h, kernel)
    return RegisterSyscall(machine=abi.machine, call=call, registers=names, interrupted=interrupted)


_X_WORD = re.compile(r"^(0x[0-9a-fA-F]+)(?:\s+<[^>]*>)?:\s+(0x[0-9a-fA-F]+)", re.MULTILINE)


def parse_memory_word(text: str) -> tuple[int, int] | None:
    """(address, value) from gdb ``x/wx ADDR`` ("0x55..:\\t0x0000007c") or lldb
    ``memory read --size 4 --format x --count 1`` ("0x55..: 0x0000007c")."""
    match = _X_WORD.search(text)
    return (int(match.group(1), 16), int(match.group(2), 16)) if match else None


# -- gdb --------------------------------------------------------------------------------------------

_MARK = "@@forksafety-section "


def find_python_gdb_extension(pid: int | None = None, executable: str | None = None) -> Path | None:
    """CPython's gdb extension (``libpython.py``, installed as ``<binary>-gdb.py``) for
    the interpreter of ``pid`` (default: this one), or None.

    Where CPython's ``make install`` and distributions put it: next to the
    interpreter (``python3.11-gdb.py``, pyenv), next to libpython
    (``libpython3.11.so.1.0-gdb.py``), or under gdb's auto-load directory
    (``/usr/share/gdb/auto-load/<path>-gdb.py``, Debian's python3-dbg).
    """
    binaries = [os.path.realpath(executable or sys.executable)]
    if pid is not None:
        try:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(None, 5)[5] if len(line.split(None, 5)) == 6 else ""
                if "libpython" in path and path not in binaries:
                    binaries.append(path)
        except OSError:
            pass
    for binary in binaries:
        for candidate in (Path(binary + "-gdb.py"), Path("/usr/share/gdb/auto-load" + binary + "-gdb.py"),
                          Path("/usr/lib/debug" + binary + "-gdb.py")):
            if candidate.is_file():
                return candidate
    return None


@dataclass
class DebuggerCapture:
    """What gdb or lldb recorded from one process.

    sections: ``[(title, text)]`` in the order the debugger printed them.
    syscall: the current syscall decoded from the registers (None if not in one).
    python_stack_source: where the Python stack came from ("py-bt", "pystack",
      "py-spy", or "" when none worked).
    detached: the debugger detached and the process is still there, not traced.
    """

    tool: str
    command: list[str]
    returncode: int | None
    output: str
    pid: int | None
    sections: list[Section] = field(default_factory=list)
    registers: dict[str, int] = field(default_factory=dict)
    syscall: RegisterSyscall | None = None
    python_stack: str = ""
    python_stack_source: str = ""
    detached: bool = False
    after: list[str] = field(default_factory=list)
    timeout: float | None = None

    @property
    def timed_out(self) -> bool:
        """True when the debugger did not finish within its timeout and was stopped."""
        return self.returncode is None

    def section(self, prefix: str) -> str:
        """Text of the first section whose title starts with ``prefix`` ("" if none)."""
        for title, body in self.sections:
            if title.startswith(prefix):
                return body if isinstance(body, str) else "\n".join(body)
        return ""


def gdb_commands(machine: str, extension: Path | None, extra: list[str] = ()) -> list[str]:
    """The gdb command line arguments after ``gdb -p PID -batch -nx`` (gdb manual:
    "Batch Mode", "Registers", "Examining Memory"; ``py-bt`` from CPython's
    Tools/gdb/libpython.py). Each step is preceded by a section marker."""
    abi = SYSCALL_ABI.get(machine)
    args = ["-iex", "set auto-load python-scripts off", "-ex", "set pagination off",
            "-ex", "set print frame-arguments none", "-ex", "set width 0"]

    def step(title: str, *commands: str) -> None:
        args.extend(["-ex", f"echo \\n{_MARK}{title}\\n"])
        for c in commands:
            args.extend(["-ex", c])

    step("info threads", "info threads")
    step("thread apply all bt (native frames)", "thread apply all bt")
    if extension is not None:
        step(f"py-bt (CPython gdb extension {extension})", f"source {extension}", "py-bt")
    regs = ["info registers"]
    if abi is not None and abi.machine == "x86_64":
        regs.append("info registers orig_rax")
    step(f"registers ({machine})", *regs)
    if abi is not None:
        step(f"x/wx ${abi.args[0]} (32-bit value at the first syscall argument)", f"x/wx ${abi.args[0]}")
    for command in extra:
        step(f"extra: {command}", command)
    step("detach", "detach")
    return args


def split_gdb_sections(output: str) -> list[Section]:
    """Split gdb output at our ``echo`` markers; text before the first is "attach"."""
    sections: list[Section] = []
    title, body = "attach", []
    for line in output.splitlines():
        if line.startswith(_MARK):
            sections.append((title, "\n".join(body).strip("\n")))
            title, body = line[len(_MARK):].strip(), []
        else:
            body.append(line)
    sections.append((title, "\n".join(body).strip("\n")))
    return [(t, b) for t, b in sections if b or t != "attach"]


def _tracer_pid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def after_detach(pid: int) -> tuple[bool, list[str]]:
    """Is ``pid`` still there and no longer traced? (TracerPid in /proc/<pid>/status, proc(5))."""
    try:
        snap = procinfo.snapshot(pid)
    except psutil.Error:
        return False, [f"pid {pid} is gone"]
    tracer = _tracer_pid(pid)
    call = snap.syscall.describe() if snap.syscall else "?"
    detached = tracer in (0, None)
    return detached, [f"pid {pid}: TracerPid {tracer if tracer is not None else '?'}, state {snap.state} "
                      f"({snap.status}), wchan {snap.wchan}, syscall {call}",
                      "detached cleanly: the process is no longer traced" if detached
                      else f"still traced by pid {tracer}"]


def _never_attached(cap: DebuggerCapture) -> None:
    """Without a backtrace the debugger may never have attached: do not call it a clean detach."""
    bt = cap.section("thread apply all bt") if cap.tool == "gdb" else cap.section("bt all")
    if "#0 " not in bt and "frame #0" not in bt:
        cap.after = [line if not line.startswith("detached cleanly") else
                     f"not traced; {cap.tool} recorded no backtrace, so it may never have attached"
                     for line in cap.after]


def gdb_capture(pid: int, gdb: str = "gdb", python_stack: str = "auto", extra: list[str] = (),
                machine: str = procinfo.MACHINE, timeout: float = DEBUGGER_TIMEOUT,
                on_start: Callable[[int], None] | None = None) -> DebuggerCapture:
    """Attach gdb to ``pid`` in batch mode and record threads, native backtraces, the
    Python stack, registers and the current syscall decoded from them; then detach.

    ``gdb -p PID -batch -nx`` (gdb manual: -batch exits after the -ex commands;
    -nx reads no init file). python_stack: "auto" (py-bt when CPython's gdb
    extension is found and works, else pystack, else py-spy), "py-bt",
    "pystack" or "py-spy". The fallback tools run after gdb detached (one
    tracer at a time, ptrace(2)). extra: more gdb commands, run before detach.

    Raises ToolMissingError when gdb is absent, PtraceError when the attach is
    refused (message names the fix). Bounded by ``timeout`` seconds; gdb is
    killed (and the process detached by the kernel) on timeout or interrupt.
    """
    require_tool(gdb, "gdb", "install it: apt-get install gdb (Debian/Ubuntu), dnf install gdb (Fedora)")
    extension = find_python_gdb_extension(pid) if python_stack in ("auto", "py-bt") else None
    command = [gdb, "-p", str(pid), "-batch", "-nx", *gdb_commands(machine, extension, list(extra))]
    cap = _run_debugger("gdb", command, timeout, on_start, split_gdb_sections, "registers", "x/wx", machine,
                        install="apt-get install gdb")
    py_bt = cap.section("py-bt")
    if extension is not None and 'File "' in py_bt:
        cap.python_stack, cap.python_stack_source = py_bt, "py-bt"
    cap.detached, cap.after = after_detach(pid)
    _never_attached(cap)
    if cap.syscall is not None and cap.syscall.call.futex and cap.syscall.value_now is None:
        value = procinfo.read_u32(pid, cap.syscall.call.futex["uaddr"])
        if value is not None:
            cap.syscall.value_now, cap.syscall.value_source = value, f"/proc/{pid}/mem"
    if not cap.python_stack and python_stack != "py-bt":
        fallback_python_stack(cap, pid, python_stack)
    return cap


def fallback_python_stack(cap: DebuggerCapture, pid: int, choice: str = "auto") -> None:
    """Fill ``cap.python_stack`` from pystack (``remote --native``) or py-spy
    (``dump --native``, then without ``--native``), per ``choice``."""
    tries: list[tuple[str, Callable[[], ToolOutput]]] = []
    if choice in ("auto", "pystack") and sys.platform.startswith("linux"):
        tries.append(("pystack", lambda: pystack_remote(pid)))
    if choice in ("auto", "py-spy"):
        tries.append(("py-spy", lambda: py_spy_dump(pid)))
        tries.append(("py-spy", lambda: py_spy_dump(pid, native=False)))
    notes = []
    for source, run in tries:
        result = run()
        if result.ok() and ".py" in result.output:
            cap.python_stack = f"$ {' '.join(result.command)}\n{result.output}"
            cap.python_stack_source = source
            break
        notes.append(f"$ {' '.join(result.command)} (exit {result.returncode})\n{result.output.strip()}")
    if not cap.python_stack:
        cap.python_stack = "\n\n".join(notes) or "no Python stack tool available"


def innermost_frame(cap: DebuggerCapture) -> str | None:
    """Frame #0 of the first thread in the debugger's backtrace (gdb ``#0 ...``, lldb ``frame #0: ...``)."""
    bt = cap.section("thread apply all bt") if cap.tool == "gdb" else cap.section("bt all")
    for line in bt.splitlines():
        text = line.strip().lstrip("* ").strip()
        if text.startswith("#0 ") or text.startswith("frame #0:"):
            return text
    return None


_PY_BT_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)', re.MULTILINE)


def innermost_python_frame(cap: DebuggerCapture) -> str | None:
    """The innermost Python frame of the recorded Python stack, as ``func (file:line)``:
    py-bt prints the most recent call first, pystack last, py-spy first."""
    text = cap.python_stack
    if cap.python_stack_source == "py-bt":
        match = _PY_BT_FRAME.search(text)
        return f"{match.group(3)} ({match.group(1)}:{match.group(2)})" if match else None
    if cap.python_stack_source == "pystack":
        return top_python_frame_pystack(text)
    if cap.python_stack_source == "py-spy":
        return top_python_frame(text)
    return None


def debugger_report_sections(cap: DebuggerCapture, machine: str = procinfo.MACHINE) -> list[Section]:
    """Sections for a crash_dumps file from a DebuggerCapture: the debugger's own
    output per step, the Python stack, the decoded syscall, and the state after detach."""
    sections: list[Section] = [(f"{cap.tool} command (exit {cap.returncode})", " ".join(cap.command))]
    for title, body in cap.sections:
        if title.startswith("py-bt") and cap.python_stack_source != "py-bt":
            title += " -- did not give a Python stack; see the fallback below"
        sections.append((f"{cap.tool}: {title}", body))
    if cap.python_stack_source not in ("py-bt", "none"):
        sections.append((f"Python stack ({cap.python_stack_source or 'none'}, after {cap.tool} detached)",
                         cap.python_stack))
    if cap.syscall is not None:
        lines = cap.syscall.lines()
        frame0 = innermost_frame(cap)
        if frame0:
            lines.insert(0, f"innermost frame of the stuck thread: {frame0}")
            lines.insert(1, f"  -> that frame is the {cap.syscall.call.name}(2) call decoded below")
        sections.append((f"current syscall decoded from the registers ({machine})", lines))
    else:
        sections.append((f"current syscall decoded from the registers ({machine})",
                         ["no syscall found in the registers (not stopped in a syscall, or unknown architecture)"]))
    sections.append((f"after {cap.tool} detached", cap.after))
    return sections


# -- lldb -------------------------------------------------------------------------------------------


def lldb_commands(machine: str, extra: list[str] = (), catch_release: str | None = None) -> list[str]:
    """lldb ``-o`` arguments (lldb docs: "GDB to LLDB command map"; ``--batch``).

    Every command must be valid for lldb: in batch mode lldb 14 stops at the
    first failing command. With ``catch_release`` (a shell command that lets
    the gated child go), lldb runs it, continues the process until it stops
    (a crash: SIGTRAP / EXC_BREAKPOINT) and records it, then kills it;
    otherwise it records the stopped process and detaches.
    """
    abi = SYSCALL_ABI.get(machine)
    cmds: list[str] = []
    if catch_release is not None:
        cmds += [f"platform shell {catch_release}", "process continue"]
    cmds += ["thread list", "bt all", "frame info", "disassemble --frame", "register read"]
    if abi is not None and catch_release is None:
        cmds.append(f"memory read --size 4 --format x --count 1 ${abi.args[0]}")
    cmds += list(extra)
    cmds.append("kill" if catch_release is not None else "detach")
    args: list[str] = []
    for c in cmds:
        args += ["-o", c]
    if catch_release is not None:
        # lldb --batch: when a command stops the process on a crash, the -k commands run instead.
        for c in ("thread list", "bt all", "frame info", "disassemble --frame", "register read", "kill"):
            args += ["-k", c]
    return args


def split_lldb_sections(output: str) -> list[Section]:
    """Split lldb batch output at its echoed ``(lldb) command`` lines."""
    sections: list[Section] = []
    title, body = "attach", []
    for line in output.splitlines():
        if line.startswith("(lldb) "):
            sections.append((title, "\n".join(body).strip("\n")))
            title, body = line[len("(lldb) "):].strip(), []
        else:
            body.append(line)
    sections.append((title, "\n".join(body).strip("\n")))
    return [(t, b) for t, b in sections if b or t != "attach"]


def _lldb_capture(pid: int, lldb: str, args: list[str], machine: str, timeout: float,
                  on_start: Callable[[int], None] | None, nr: int | None) -> DebuggerCapture:
    require_tool(lldb, "lldb", "install it: apt-get install lldb (Debian/Ubuntu); on macOS: xcode-select --install")
    command = [lldb, "-p", str(pid), "--batch", *args]
    # lldb 14 on Debian prints "No module named 'lldb.embedded_interpreter'" (its Python
    # scripting is not packaged): harmless for the commands used here.
    return _run_debugger("lldb", command, timeout, on_start, split_lldb_sections, "register read", "memory read",
                         machine, install="apt-get install lldb", nr=nr)


def _run_debugger(tool: str, command: list[str], timeout: float, on_start: Callable[[int], None] | None,
                  split: Callable[[str], list[Section]], registers: str, memory: str, machine: str,
                  install: str, nr: int | None = None) -> DebuggerCapture:
    """Run a batch-mode debugger (bounded by ``timeout`` seconds) and decode what it
    printed: sections, registers, the syscall they show and the futex word it read.
    Raises ToolMissingError when it cannot run, PtraceError when the attach is refused."""
    out = run_tool(command, timeout=timeout, on_start=on_start)
    if out.pid is None:
        raise not_runnable(tool, out, f"point --{tool} at a working {tool}, or install it: {install}")
    refused = ptrace_refusal(out.output, tool)
    if refused is not None:
        raise refused
    cap = DebuggerCapture(tool, command, out.returncode, out.output, out.pid, sections=split(out.output),
                          timeout=timeout)
    cap.registers = parse_registers(cap.section(registers))
    cap.syscall = decode_syscall_registers(cap.registers, machine, nr=nr)
    word = parse_memory_word(cap.section(memory))
    if cap.syscall is not None and cap.syscall.call.futex and word and word[0] == cap.syscall.call.futex["uaddr"]:
        cap.syscall.value_now, cap.syscall.value_source = word[1], f"{tool} {memory}"
    return cap


def lldb_capture(pid: int, lldb: str = "lldb", extra: list[str] = (), machine: str = procinfo.MACHINE,
                 timeout: float = DEBUGGER_TIMEOUT, on_start: Callable[[int], None] | None = None,
                 syscall_nr: int | None = None, python_stack: bool = True) -> DebuggerCapture:
    """Attach lldb to a stuck ``pid`` (``lldb -p PID --batch``), record thread list,
    ``bt all``, the frame, its disassembly, registers and the word at the first
    syscall argument, then detach.

    syscall_nr: the current syscall number from /proc/<pid>/syscall (lldb on
    Linux x86_64 does not show orig_rax); None: read it from the registers (x8 on aarch64).
    python_stack: add the Python stack from pystack / py-spy after lldb detached.
    Raises ToolMissingError when lldb is absent, PtraceError when the attach is refused.
    """
    if syscall_nr is None and machine in ("x86_64", "amd64"):
        try:
            call = procinfo.snapshot(pid).syscall
            syscall_nr = call.nr if call else None
        except psutil.Error:
            pass
    cap = _lldb_capture(pid, lldb, lldb_commands(machine, extra), machine, timeout, on_start, syscall_nr)
    cap.detached, cap.after = after_detach(pid)
    _never_attached(cap)
    if cap.syscall is not None and cap.syscall.call.futex and cap.syscall.value_now is None:
        value = procinfo.read_u32(pid, cap.syscall.call.futex["uaddr"])
        if value is not None:
            cap.syscall.value_now, cap.syscall.value_source = value, f"/proc/{pid}/mem"
    if python_stack:
        fallback_python_stack(cap, pid)  # lldb has no py-bt; pystack / py-spy after lldb detached
    return cap


def lldb_catch(pid: int, release: str, lldb: str = "lldb", extra: list[str] = (),
               machine: str = procinfo.MACHINE, timeout: float = DEBUGGER_TIMEOUT,
               on_start: Callable[[int], None] | None = None) -> DebuggerCapture:
    """Attach lldb to a *gated* child before it runs, let it go and catch its crash.

    release: shell command lldb runs once attached (``platform shell``) that lets
    the child continue (e.g. ``dd if=/dev/zero of=FIFO bs=1 count=1``; lldb's
    ``platform shell`` does not honour shell redirections). lldb then continues the
    process; when it stops on the crash (macOS: EXC_BREAKPOINT, the SIGTRAP of
    the report; Linux: a signal), records bt all, the frame, its disassembly and
    registers, and kills it. A child that hangs instead ends by the timeout.
    Raises ToolMissingError / PtraceError like ``lldb_capture``.
    """
    args = lldb_commands(machine, extra, catch_release=release)
    cap = _lldb_capture(pid, lldb, args, machine, timeout, on_start, None)
    cap.after = ["lldb killed the process after recording the crash" if not psutil.pid_exists(pid)
                 or _zombie(pid) else f"pid {pid} still exists"]
    cap.python_stack_source = "none"
    return cap


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


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
