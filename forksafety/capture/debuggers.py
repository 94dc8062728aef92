"""gdb and lldb in batch mode: commands, output split into sections, registers and
the syscall decoded from them (per architecture), the Python stack.

Part of ``forksafety.capture``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .. import procinfo
from ..outcome import signal_of_returncode
from ..watch import pid_gone
from .tools import (DEBUGGER_TIMEOUT, Section, ToolOutput, not_runnable, ptrace_refusal, py_spy_dump, pystack_remote,
                    require_tool, run_tool, top_python_frame, top_python_frame_pystack)


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


def killed_by(cap: DebuggerCapture) -> str | None:
    """The signal that ended the debugger (``"SIGKILL"``), or None when it exited by itself
    or timed out (subprocess: a negative returncode is the signal's number)."""
    return signal_of_returncode(cap.returncode)


def _killed_before_detach(cap: DebuggerCapture) -> None:
    """A debugger killed by a signal (someone killed gdb mid-run) never ran its detach:
    the kernel detached the process when the tracer died (ptrace(2)). Not a clean detach."""
    sig = killed_by(cap)
    if sig is None:
        return
    cap.detached = False
    cap.after = [line if not line.startswith("detached cleanly") else
                 f"not traced any more, but {cap.tool} did not detach: it was killed by {sig} "
                 "before its detach command (the kernel detached the process)"
                 for line in cap.after]


def _after_attach(cap: DebuggerCapture, pid: int) -> None:
    """After gdb or lldb detached: the process's state (was it detached cleanly?), and
    the futex word from /proc/<pid>/mem when the debugger could not read it."""
    cap.detached, cap.after = after_detach(pid)
    _never_attached(cap)
    _killed_before_detach(cap)
    if cap.syscall is not None and cap.syscall.call.futex and cap.syscall.value_now is None:
        value = procinfo.read_u32(pid, cap.syscall.call.futex["uaddr"])
        if value is not None:
            cap.syscall.value_now, cap.syscall.value_source = value, f"/proc/{pid}/mem"


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
    _after_attach(cap, pid)
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
    _after_attach(cap, pid)
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
    cap.after = ["lldb killed the process after recording the crash" if pid_gone(pid)
                 else f"pid {pid} still exists"]
    cap.python_stack_source = "none"
    return cap


