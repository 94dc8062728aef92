"""What the OS says about a process: threads and their names, state, wchan, current syscall.

Linux facts come from procfs (proc(5)): ``/proc/<pid>/task/<tid>/comm`` (thread
name, 15 bytes at most), ``.../wchan`` (kernel function the task sleeps in),
``.../syscall`` (syscall number, six arguments, stack and program counter, or
``running``). CPU times and process status come from psutil. Syscall numbers
are per architecture: x86_64 from ``arch/x86/entry/syscalls/syscall_64.tbl``,
aarch64 from the generic table ``include/uapi/asm-generic/unistd.h``.

On macOS none of procfs exists: the functions return what psutil can see and
leave the Linux-only fields ``None``.
"""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

MACHINE = platform.machine().lower()

# Syscall numbers of the calls a stuck process is usually found in.
SYSCALLS: dict[str, dict[int, str]] = {
    "x86_64": {
        0: "read", 7: "poll", 23: "select", 35: "nanosleep", 43: "accept", 45: "recvfrom",
        47: "recvmsg", 61: "wait4", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait",
        270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
        449: "futex_waitv",
    },
    "aarch64": {
        22: "epoll_pwait", 63: "read", 72: "pselect6", 73: "ppoll", 98: "futex",
        101: "nanosleep", 115: "clock_nanosleep", 202: "accept", 207: "recvfrom",
        212: "recvmsg", 242: "accept4", 260: "wait4", 441: "epoll_pwait2", 449: "futex_waitv",
    },
}
SYSCALLS["amd64"] = SYSCALLS["x86_64"]
SYSCALLS["arm64"] = SYSCALLS["aarch64"]

# futex(2): the operation is the low bits of ``futex_op``; FUTEX_PRIVATE_FLAG (128)
# says the futex is private to the process, FUTEX_CLOCK_REALTIME (256) picks the clock.
FUTEX_PRIVATE_FLAG = 128
FUTEX_CLOCK_REALTIME = 256
FUTEX_OPS = {
    0: "FUTEX_WAIT", 1: "FUTEX_WAKE", 2: "FUTEX_FD", 3: "FUTEX_REQUEUE", 4: "FUTEX_CMP_REQUEUE",
    5: "FUTEX_WAKE_OP", 6: "FUTEX_LOCK_PI", 7: "FUTEX_UNLOCK_PI", 8: "FUTEX_TRYLOCK_PI",
    9: "FUTEX_WAIT_BITSET", 10: "FUTEX_WAKE_BITSET", 11: "FUTEX_WAIT_REQUEUE_PI",
    12: "FUTEX_CMP_REQUEUE_PI", 13: "FUTEX_LOCK_PI2",
}
FUTEX_WAIT_OPS = {0, 6, 9, 11, 13}


@dataclass
class Syscall:
    """One decoded line of ``/proc/<tid>/syscall``.

    nr: syscall number (None when the task is running or not in a syscall).
    name: syscall name for this architecture, or ``syscall_<nr>``.
    args: the six raw arguments.
    wait: "untimed" (blocked with no timeout: only another party can end it),
      "timed" (ends by itself: sleep, or a wait with a timeout), or "none".
    futex: for futex waits, a dict with op, op_name, private, uaddr, val, timeout.
    """

    raw: str
    nr: int | None = None
    name: str = "running"
    args: list[int] = field(default_factory=list)
    wait: str = "none"
    futex: dict | None = None

    def describe(self) -> str:
        """One line such as ``futex(0x55d.., FUTEX_WAIT_BITSET_PRIVATE, 126, NULL)``."""
        if self.nr is None:
            return self.name
        if self.futex:
            f = self.futex
            timeout = "NULL" if f["timeout"] == 0 else hex(f["timeout"])
            return f"{self.name}({hex(f['uaddr'])}, {f['op_name']}, {f['val']}, {timeout})"
        return f"{self.name}({', '.join(hex(a) for a in self.args[:4])})"


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_syscall(raw: str, machine: str = MACHINE) -> Syscall:
    """Decode the text of ``/proc/<pid>/syscall`` (proc(5)) for ``machine``.

    The format is ``nr arg1..arg6 sp pc`` in hex, ``-1 sp pc`` when blocked outside
    a syscall, or ``running``. Raises nothing: unknown text gives ``name="unknown"``.
    """
    text = raw.strip()
    parts = text.split()
    if not parts or parts[0] == "running":
        return Syscall(raw=text)
    try:
        nr = int(parts[0], 0)
        args = [int(p, 16) for p in parts[1:7]]
    except ValueError:
        return Syscall(raw=text, name="unknown")
    if nr < 0:
        return Syscall(raw=text, nr=None, name="not-in-syscall")
    name = SYSCALLS.get(machine, {}).get(nr, f"syscall_{nr}")
    call = Syscall(raw=text, nr=nr, name=name, args=args)
    if name == "futex" and len(args) >= 4:
        op = args[1]
        cmd = op & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
        private = bool(op & FUTEX_PRIVATE_FLAG)
        op_name = FUTEX_OPS.get(cmd, f"op_{cmd}") + ("_PRIVATE" if private else "")
        call.futex = {
            "uaddr": args[0], "op": op, "op_name": op_name, "cmd": cmd,
            "private": private, "val": _signed32(args[2]), "timeout": args[3],
        }
        if cmd in FUTEX_WAIT_OPS:
            call.wait = "untimed" if args[3] == 0 else "timed"
    elif name in ("nanosleep", "clock_nanosleep"):
        call.wait = "timed"
    elif name == "poll":  # poll(fds, nfds, timeout_ms)
        call.wait = "untimed" if _signed32(args[2]) < 0 else "timed"
    elif name in ("epoll_wait", "epoll_pwait"):  # (epfd, events, maxevents, timeout_ms, ...)
        call.wait = "untimed" if _signed32(args[3]) < 0 else "timed"
    elif name == "ppoll":  # ppoll(fds, nfds, tmo_p, sigmask)
        call.wait = "untimed" if args[2] == 0 else "timed"
    elif name == "epoll_pwait2":  # (epfd, events, maxevents, timeout*, sigmask)
        call.wait = "untimed" if args[3] == 0 else "timed"
    elif name == "select":
        call.wait = "untimed" if args[4] == 0 else "timed"
    elif name == "pselect6":
        call.wait = "untimed" if args[4] == 0 else "timed"
    elif name == "futex_waitv":
        call.wait = "untimed" if args[3] == 0 else "timed"
    elif name in ("read", "recvfrom", "recvmsg", "wait4", "accept", "accept4"):
        call.wait = "untimed"
    return call


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (OSError, ProcessLookupError):
        return None


@dataclass
class ThreadInfo:
    """One thread (task) of a process: tid, name (comm), state letter, wchan, syscall."""

    tid: int
    name: str
    state: str | None = None
    wchan: str | None = None
    syscall: Syscall | None = None


@dataclass
class ProcSnapshot:
    """A process as the OS shows it at one moment.

    cpu_seconds: user + system CPU time of all its threads (psutil.cpu_times), seconds.
    threads: one ThreadInfo per thread (Linux: from /proc/<pid>/task).
    """

    pid: int
    name: str
    status: str
    state: str | None
    wchan: str | None
    cpu_seconds: float
    threads: list[ThreadInfo]
    syscall: Syscall | None

    @property
    def thread_names(self) -> list[str]:
        """Sorted thread names (comm)."""
        return sorted(t.name for t in self.threads)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def thread_names(pid: int) -> list[str]:
    """Names of the threads of ``pid`` (``/proc/<pid>/task/*/comm`` on Linux).

    Off Linux, psutil gives thread ids but no names: returns ``["?"] * n``.
    Raises psutil.NoSuchProcess when the process is gone.
    """
    return [t.name for t in list_threads(pid, detail=False)]


def list_threads(pid: int, detail: bool = True) -> list[ThreadInfo]:
    """The threads of ``pid``; with ``detail`` also state, wchan and syscall (Linux)."""
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.is_dir():
        if not psutil.pid_exists(pid):
            raise psutil.NoSuchProcess(pid)
        return [ThreadInfo(tid=t.id, name="?") for t in psutil.Process(pid).threads()]
    threads = []
    try:
        tids = sorted(int(t) for t in os.listdir(task_dir))
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    for tid in tids:
        base = task_dir / str(tid)
        comm = _read(base / "comm")
        if comm is None:
            continue  # the thread exited while we looked
        info = ThreadInfo(tid=tid, name=comm.strip())
        if detail:
            stat = _read(base / "stat")
            info.state = stat.rsplit(")", 1)[1].split()[0] if stat else None
            wchan = _read(base / "wchan")
            info.wchan = wchan.strip() if wchan and wchan.strip() != "0" else None
            raw = _read(base / "syscall")
            info.syscall = decode_syscall(raw) if raw else None
        threads.append(info)
    return threads


def snapshot(pid: int) -> ProcSnapshot:
    """Everything ``procinfo`` knows about ``pid`` now.

    Raises psutil.NoSuchProcess when the process is gone, psutil.AccessDenied
    when the OS refuses (another user's process without privileges).
    """
    proc = psutil.Process(pid)
    with proc.oneshot():
        name = proc.name()
        status = proc.status()
        cpu = proc.cpu_times()
    threads = list_threads(pid)
    main = next((t for t in threads if t.tid == pid), None)
    return ProcSnapshot(
        pid=pid,
        name=name,
        status=status,
        state=main.state if main else None,
        wchan=main.wchan if main else None,
        cpu_seconds=round(cpu.user + cpu.system, 4),
        threads=threads,
        syscall=main.syscall if main else None,
    )


def read_u32(pid: int, address: int) -> int | None:
    """The 32-bit value at ``address`` in ``pid``'s memory (``/proc/<pid>/mem``).

    Needs ptrace read access (root, or the process's ancestor under
    kernel.yama.ptrace_scope=1). Returns None when it cannot be read.
    """
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            data = mem.read(4)
    except (OSError, OverflowError, ValueError):
        return None
    return struct.unpack("=I", data)[0] if len(data) == 4 else None  # native byte order


def fd_table(pid: int) -> list[tuple[int, str]]:
    """Open file descriptors of ``pid`` and what they point to, from the links in
    ``/proc/<pid>/fd`` (proc(5)): files, ``socket:[inode]``, ``pipe:[inode]``,
    ``anon_inode:[eventfd]``, ``anon_inode:[eventpoll]``... Sorted by fd; [] when
    unreadable (another user's process, or not Linux)."""
    folder = Path(f"/proc/{pid}/fd")
    table = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        try:
            table.append((int(name), os.readlink(folder / name)))
        except (OSError, ValueError):
            continue  # closed while we looked
    return sorted(table)


def lost_threads(parent_names: list[str], child_names: list[str]) -> list[str]:
    """Thread names the parent had that the child does not (multiset difference, sorted)."""
    remaining = list(child_names)
    lost = []
    for name in sorted(parent_names):
        if name in remaining:
            remaining.remove(name)
        else:
            lost.append(name)
    return lost
