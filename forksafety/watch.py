"""Bounded waits, hang detection on a process, and stopping a whole process tree.

Hang rules, strongest first (see ``classify_blocked``):

* ``deadlock-proven``: the process has exactly one thread and it is blocked in a
  futex wait on a *process-private* futex (FUTEX_PRIVATE_FLAG) with *no timeout*
  (timeout pointer NULL). futex(2): a waiter sleeps until a FUTEX_WAKE on the
  same address, a signal, or the timeout; a private futex can only be woken by
  a thread of the same process, and there is no other thread. With no timeout,
  nothing can ever end the wait: a deadlock, proven from one sample.
* ``stalled``: every thread is blocked in a wait with no timeout, and the
  process's CPU time has not advanced for the whole stall window (seconds).
  Strong evidence, not a proof: another process could still, in principle, end
  an I/O wait. Waits with a timeout (sleep, ``Event.wait(timeout)``) are never
  called stalled: they end by themselves.
* ``deadline``: the caller's deadline passed with no result (decided by the caller).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import procinfo

RULE_PROVEN = "deadlock-proven"
RULE_STALLED = "stalled"
RULE_DEADLINE = "deadline"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value
    or ``timeout`` seconds pass. Returns that value, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def is_proven_deadlock(snap: procinfo.ProcSnapshot) -> bool:
    """True when ``snap`` is a single thread in an untimed private futex wait (futex(2))."""
    if len(snap.threads) != 1:
        return False
    call = snap.threads[0].syscall
    return bool(
        call is not None
        and call.futex is not None
        and call.futex["private"]
        and call.wait == "untimed"
        and snap.threads[0].state in ("S", "D")
    )


def all_threads_untimed(snap: procinfo.ProcSnapshot) -> bool:
    """True when every thread is asleep in a syscall wait that has no timeout."""
    return bool(snap.threads) and all(
        t.state in ("S", "D") and t.syscall is not None and t.syscall.wait == "untimed"
        for t in snap.threads
    )


@dataclass
class HangVerdict:
    """A hang rule that fired: rule name, the snapshot it fired on, seconds observed."""

    rule: str
    snapshot: procinfo.ProcSnapshot
    observed_seconds: float


class StallDetector:
    """Feed it snapshots of one process over time; it says when a hang rule fires.

    stall: seconds during which every thread must stay in untimed waits with no
    CPU progress before ``stalled`` fires. ``deadlock-proven`` fires at once.
    """

    def __init__(self, stall: float = 2.0) -> None:
        self.stall = stall
        self._since: float | None = None
        self._cpu: float | None = None

    def feed(self, snap: procinfo.ProcSnapshot, now: float | None = None) -> HangVerdict | None:
        """Return a HangVerdict when a rule fires on ``snap`` (taken at ``now``), else None."""
        now = time.monotonic() if now is None else now
        if is_proven_deadlock(snap):
            return HangVerdict(RULE_PROVEN, snap, 0.0)
        if not all_threads_untimed(snap) or snap.cpu_seconds != self._cpu:
            self._since = now if all_threads_untimed(snap) else None
            self._cpu = snap.cpu_seconds
            return None
        if self._since is None:
            self._since = now
            return None
        if now - self._since >= self.stall:
            return HangVerdict(RULE_STALLED, snap, now - self._since)
        return None


@dataclass
class Watched:
    """What ``watch_process`` saw: either the watched work ended (``value``: what
    ``done`` returned), or a hang rule fired (``rule``: deadlock-proven, stalled or
    deadline) on ``snapshot``. snapshot: the one the rule fired on, else the last
    readable one (None when there was none). seconds: from the start of the watch."""

    value: object = None
    rule: str | None = None
    snapshot: procinfo.ProcSnapshot | None = None
    seconds: float = 0.0

    @property
    def hung(self) -> bool:
        """True when a hang rule (or the deadline) decided, not the work."""
        return self.rule is not None


def watch_process(done: Callable[[], object], pid: Callable[[], int | None] | int | None, deadline: float,
                  stall: float = 2.0, early_verdict: bool = True, interval: float = 0.02,
                  pause: Callable[[float], None] | None = None) -> Watched:
    """The one watch loop: until ``done()`` returns something other than None, look
    at process ``pid`` (or the pid ``pid()`` returns once known) every ``interval``
    seconds and apply the hang rules (``StallDetector(stall)``), bounded by
    ``deadline`` (a ``time.monotonic()`` value: RULE_DEADLINE when it passes).

    early_verdict: return as soon as a rule fires (a proven deadlock needs one
    sample); False watches until the deadline and reports the first rule that fired.
    pause: how to wait between looks (default time.sleep; a pipe's poll wakes earlier).
    A snapshot that cannot be read (the process is gone, or a zombie) is skipped:
    ``done`` says how it ended. Never raises for a vanished process.
    """
    started = time.monotonic()
    wait = pause or time.sleep
    detector = StallDetector(stall)
    snap: procinfo.ProcSnapshot | None = None
    fired: str | None = None
    while True:
        value = done()
        if value is not None:
            return Watched(value=value, snapshot=snap, seconds=time.monotonic() - started)
        target = pid() if callable(pid) else pid
        if target is not None:
            try:
                current = procinfo.snapshot(target)
            except Exception:  # noqa: BLE001 - gone between two looks: ``done`` says how it ended
                current = None
            if current is not None and current.status != psutil.STATUS_ZOMBIE:
                snap = current
                hang = detector.feed(current)
                if hang is not None:
                    if early_verdict:
                        return Watched(rule=hang.rule, snapshot=hang.snapshot, seconds=time.monotonic() - started)
                    fired = fired or hang.rule
        if time.monotonic() >= deadline:
            return Watched(rule=fired or RULE_DEADLINE, snapshot=snap, seconds=time.monotonic() - started)
        wait(interval)


def group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists (kill(2) with signal 0)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (psutil), parents first; [] when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# -- stopping processes: the one family (every product stops its processes with these) --------
#
# Rules shared by all of them: a zombie counts as gone (it runs nothing any more; a
# container's PID 1 may never reap the orphans it adopts), every wait is bounded,
# and no function raises for a process that is already gone.


def process_gone(proc: psutil.Process) -> bool:
    """True when ``proc`` has exited: gone, or a zombie (exited, not yet reaped)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def pid_gone(pid: int) -> bool:
    """``process_gone`` for a pid: True when no process ``pid`` runs (gone or a zombie)."""
    try:
        return process_gone(psutil.Process(pid))
    except psutil.Error:
        return True


def _reap(procs: Iterable[psutil.Process]) -> None:
    """waitpid(WNOHANG) each process that is our child and has exited (others: no-op)."""
    for p in procs:
        try:
            os.waitpid(p.pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def _wait_gone(procs: list[psutil.Process], timeout: float, reap: bool = False) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds until every process is gone or a zombie; return the others."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not process_gone(p)]
    while alive:
        if reap:
            _reap(alive)
        alive = [p for p in alive if not process_gone(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if reap:
        # A process that turned zombie between a reap and the look that followed it was
        # dropped from ``alive`` unreaped: reap every one once more (WNOHANG, so bounded).
        _reap(procs)
    return alive


def stop_processes(procs: Iterable[psutil.Process], grace: float = 1.0, sig: int = signal.SIGTERM,
                   kill_wait: float = 5.0, reap: bool = False) -> list[int]:
    """Send ``sig`` to every process, wait up to ``grace`` seconds, SIGKILL the rest,
    and wait up to ``kill_wait`` seconds until they are gone. Zombies count as gone.
    reap: also waitpid() those that are our own children (leave it False for a
    process a ``subprocess.Popen`` owns: Popen must reap it to learn its exit code).
    Returns the pids still alive (normally [])."""
    procs = list(procs)
    if reap:
        _reap(procs)  # those that are zombies already would otherwise be left out unreaped
    procs = [p for p in procs if not process_gone(p)]
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
    alive = _wait_gone(procs, grace, reap)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return [p.pid for p in _wait_gone(alive, kill_wait, reap)]


def group_members(pgid: int, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """The processes of process group ``pgid`` that still run (zombies left out),
    without this process and ``exclude``. [] at once when the group is empty (kill(2) 0)."""
    if not group_alive(pgid):
        return []
    skip = {os.getpid(), *exclude}
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in skip and os.getpgid(proc.pid) == pgid and not process_gone(proc):
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


ZOMBIE_REAP_WAIT = 3.0  # seconds stop_group gives init to reap the zombies of a stopped group (measured here: ~1 s)


def stop_group(proc: subprocess.Popen, grace: float = 2.0, sig: int = signal.SIGTERM,
               kill_wait: float = 5.0, zombie_wait: float = ZOMBIE_REAP_WAIT) -> list[int]:
    """Stop ``proc`` and every process of its process group (it leads one: started with
    ``start_new_session``): ``sig`` to the group, up to ``grace`` seconds, then SIGKILL
    and up to ``kill_wait`` seconds; ``sig=SIGKILL`` kills at once. Reaps ``proc``
    (bounded, 5 s). Members that are zombies count as gone; up to ``zombie_wait``
    seconds go to letting init reap them (0: do not wait, they run nothing). Returns the pids of the
    group still running (normally [])."""
    pgid = proc.pid
    for signum, wait in ((sig, grace), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.send_signal(signum)  # the leader, also when it left its group
        except (ProcessLookupError, OSError):
            pass
        deadline = time.monotonic() + wait
        while True:
            proc.poll()
            if proc.returncode is not None and not group_members(pgid):
                # only zombies left: give their new parent (init) a moment to reap them
                if zombie_wait > 0:
                    wait_until(lambda: not group_alive(pgid), zombie_wait, interval=0.01)
                return []
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if signum == signal.SIGKILL:
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return [p.pid for p in group_members(pgid)]


def stop_tree(pid: int, grace: float = 1.0, sig: int = signal.SIGTERM, pgid: int | None = None) -> list[int]:
    """Stop ``pid``, every descendant, and (when given) every process of group ``pgid``.

    Descendants are collected before any signal is sent, so children reparented
    to init when their parent dies are still stopped. Returns pids still alive.
    """
    procs = {p.pid: p for p in process_tree(pid)}
    if pgid is not None:
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == pgid:
                    procs.setdefault(p.pid, p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
    return stop_processes(procs.values(), grace=grace, sig=sig)


RUN_ID_ENV = "FORKSAFETY_RUN_ID"
SCENARIO_ENV = "FORKSAFETY_SCENARIO"
# the pid of the runner that started a process (set by the runner matrix): a process
# whose owner is gone was left by a killed runner (see sweep_orphans)
OWNER_ENV = "FORKSAFETY_OWNER_PID"


def processes_of_run(run_id: str, name: str = RUN_ID_ENV) -> list[psutil.Process]:
    """Every live process (but this one) whose environment has ``name=run_id``.

    Every process a run starts carries FORKSAFETY_RUN_ID (and each scenario's
    FORKSAFETY_SCENARIO); children inherit it (fork, spawn and forkserver alike),
    so this finds them even after they were reparented. Reading another
    process's environment needs the same user or root.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(name) == run_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def sweep_run(run_id: str, grace: float = 1.0, name: str = RUN_ID_ENV, rounds: int = 3,
              exclude: Iterable[int] = (), reap: bool = True) -> list[int]:
    """Stop every process still tagged ``name=run_id`` (see processes_of_run), but
    ``exclude``, in up to ``rounds`` passes (a process being forked during one pass
    is caught by the next). Zombies are left out (and reaped when ours, ``reap``).
    Returns the pids that were found (normally none). Bounded: each pass waits at
    most ``grace`` + 5 seconds."""
    skip = set(exclude)
    found: list[int] = []
    for _ in range(rounds):
        procs = [p for p in processes_of_run(run_id, name) if p.pid not in skip and not process_gone(p)]
        if not procs:
            break
        found += [p.pid for p in procs]
        stop_processes(procs, grace=grace, reap=reap)
    return found


def sweep_orphans(name: str = OWNER_ENV, grace: float = 0.5) -> list[int]:
    """Stop every process tagged ``name=<pid>`` whose owner ``pid`` is gone: left by a
    runner that was killed (SIGKILL leaves no time to clean up; PR_SET_PDEATHSIG
    reaches only the runner's direct children, not what they forked). A pid taken
    over by a process started after the tagged one counts as gone. Returns the
    pids stopped (normally none). Bounded: ``grace`` + 5 seconds."""
    orphans = []
    for proc in psutil.process_iter():
        try:
            owner = proc.environ().get(name)
            if proc.pid == os.getpid() or not owner or not owner.isdigit() or process_gone(proc):
                continue
            if int(owner) == os.getpid() or _creator_alive(int(owner), proc.create_time()):
                continue
            orphans.append(proc)
        except (psutil.Error, OSError):
            continue
    stop_processes(orphans, grace=grace, reap=True)
    return [p.pid for p in orphans]


def remove_stale_pid_folders(parent: Path, pattern: re.Pattern) -> list[Path]:
    """Remove the folders directly under ``parent`` whose whole name matches ``pattern``,
    that belong to this user, and whose creating process (the pid in group 1) is gone.

    Only names of our own pattern are touched: folders of runs still going (their
    pid exists) and anything else are left alone. A zombie counts as gone, and so
    does a pid taken over by a process started after the folder last changed (its
    creator started before creating it). Returns the folders removed.
    """
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for folder in entries:
        match = pattern.fullmatch(folder.name)
        if match is None:
            continue
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
            continue
        if _creator_alive(int(match.group(1)), info.st_mtime):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def _creator_alive(pid: int, changed: float) -> bool:
    """True when ``pid`` runs and may be the process that made a folder last changed at ``changed``."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= changed + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: leave it


# The one registry of our temporary folders: kind -> who makes it. Every one is named
# ``forksafety-<kind>-<pid of the creating process>-<anything>`` (``make_temp_dir``),
# so a later run can remove those whose creator is gone (remove_stale_temp_folders).
TEMP_KINDS: dict[str, str] = {
    "run": "the Celery runner (forksafety.harness), one per scenario",
    "redis": "the runner's private redis-server (forksafety.broker)",
    "fsbroker": "kombu's filesystem transport (forksafety.broker)",
    "check": "python -m forksafety check (forksafety.check)",
    "lab": "python -m forksafety lab (forksafety.lab), one per case",
    "strace": "demo_crash.py --strace (forksafety.cli_demo)",
    "versions": "make versions (forksafety.versionsets), the matrix's records and logs",
    "runners": "the runner matrix (forksafety.runners), one per scenario",
}


def temp_prefix(kind: str, pid: int | None = None) -> str:
    """``forksafety-<kind>-<pid>-`` for a kind of TEMP_KINDS (pid: default this process).
    Raises KeyError for a kind not in the registry."""
    TEMP_KINDS[kind]  # noqa: B018 - an unregistered kind is a bug of ours
    return f"forksafety-{kind}-{os.getpid() if pid is None else pid}-"


def make_temp_dir(kind: str, label: str = "") -> Path:
    """A new temporary folder ``forksafety-<kind>-<pid>-[<label>-]<random>`` (tempfile.mkdtemp)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=temp_prefix(kind) + (f"{label}-" if label else "")))


def stale_temp_pattern(kinds: Iterable[str] | None = None) -> re.Pattern:
    """The pattern of our temporary folders of ``kinds`` (default: every kind of
    TEMP_KINDS); group 1 is the creating pid."""
    names = list(TEMP_KINDS if kinds is None else kinds)
    return re.compile(rf"forksafety-(?:{'|'.join(map(re.escape, names))})-(\d+)-.+")


STALE_TEMP_RE = stale_temp_pattern()


def remove_stale_temp_folders(tmp: Path | None = None, kinds: Iterable[str] | None = None) -> list[Path]:
    """Remove our temporary folders (of ``kinds``, default all of TEMP_KINDS) left by
    processes that were killed (see remove_stale_pid_folders). Returns the folders removed."""
    import tempfile

    pattern = STALE_TEMP_RE if kinds is None else stale_temp_pattern(kinds)
    return remove_stale_pid_folders(tmp or Path(tempfile.gettempdir()), pattern)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    prctl(2) PR_SET_PDEATHSIG (Linux only; a no-op elsewhere). Used in pool
    children so a runner killed with SIGKILL cannot leave workers behind.
    Note prctl(2): "parent" is the *thread* that created this process.
    """
    _prctl_pdeathsig()(sig)


def _prctl_pdeathsig() -> Callable[[int], None]:
    if not os.path.exists("/proc/self"):
        return lambda sig: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_PDEATHSIG = 1
    return lambda sig: prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen that sets PR_SET_PDEATHSIG.

    The libc symbol is resolved here, in the parent, so the forked child only
    makes one foreign call before exec (no import, no lock taken).
    """
    call = _prctl_pdeathsig()
    return lambda: call(sig)
