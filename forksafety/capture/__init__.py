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

The package is a facade: ``tools`` (running tools, Python stacks, ptrace checks),
``evidence`` (the OS view of a stuck child, crash_dumps files), ``debuggers``
(gdb, lldb, registers) and ``strace``; ``__all__`` lists the public names.
Importing it starts no thread and opens no connection.
"""

from __future__ import annotations

from ..errors import PtraceError, ToolMissingError  # raised by this package's functions
from .tools import (
    CAP_SYS_PTRACE,
    DEBUGGER_TIMEOUT,
    KILL_GRACE,
    PTRACE_HELP,
    Section,
    TOOL_TIMEOUT,
    ToolOutput,
    check_ptrace_allowed,
    check_tool_runs,
    has_cap_sys_ptrace,
    last_line,
    not_runnable,
    ptrace_refusal,
    ptrace_scope,
    py_spy_dump,
    pystack_remote,
    python_stacks,
    require_tool,
    run_tool,
    tool_available,
    tool_path,
    top_python_frame,
    top_python_frame_pystack,
)
from .evidence import (
    capture_celery_child,
    capture_forked_child,
    child_evidence,
    count_names,
    describe_snapshot,
    dump_path,
    explain_child,
    futex_lines,
    hang_detail,
    write_dump,
)
from .debuggers import (
    DebuggerCapture,
    RegisterSyscall,
    SYSCALL_ABI,
    SyscallABI,
    after_detach,
    debugger_report_sections,
    decode_syscall_registers,
    fallback_python_stack,
    find_python_gdb_extension,
    gdb_capture,
    gdb_commands,
    innermost_frame,
    innermost_python_frame,
    killed_by,
    lldb_capture,
    lldb_catch,
    lldb_commands,
    parse_memory_word,
    parse_registers,
    split_gdb_sections,
    split_lldb_sections,
)
from .strace import (
    UnfinishedCall,
    find_unfinished_futex,
    strace_command,
)

__all__ = [
    "PtraceError",
    "ToolMissingError",
    "CAP_SYS_PTRACE",
    "DEBUGGER_TIMEOUT",
    "DebuggerCapture",
    "killed_by",
    "KILL_GRACE",
    "PTRACE_HELP",
    "RegisterSyscall",
    "SYSCALL_ABI",
    "Section",
    "SyscallABI",
    "TOOL_TIMEOUT",
    "ToolOutput",
    "UnfinishedCall",
    "after_detach",
    "capture_celery_child",
    "capture_forked_child",
    "check_ptrace_allowed",
    "check_tool_runs",
    "child_evidence",
    "count_names",
    "debugger_report_sections",
    "decode_syscall_registers",
    "describe_snapshot",
    "dump_path",
    "explain_child",
    "fallback_python_stack",
    "find_python_gdb_extension",
    "find_unfinished_futex",
    "futex_lines",
    "hang_detail",
    "gdb_capture",
    "gdb_commands",
    "has_cap_sys_ptrace",
    "innermost_frame",
    "innermost_python_frame",
    "last_line",
    "lldb_capture",
    "lldb_catch",
    "lldb_commands",
    "not_runnable",
    "parse_memory_word",
    "parse_registers",
    "ptrace_refusal",
    "ptrace_scope",
    "py_spy_dump",
    "pystack_remote",
    "python_stacks",
    "require_tool",
    "run_tool",
    "split_gdb_sections",
    "split_lldb_sections",
    "strace_command",
    "tool_available",
    "tool_path",
    "top_python_frame",
    "top_python_frame_pystack",
    "write_dump",
]
