"""Fork a callable and hear back from the child: the one helper every product uses
(the fork demo's child, ``check --probe``'s child, the lab through the probe).

Modelled on CPython's ``Lib/multiprocessing/popen_fork.py``: ``ForkedCall.start``
forks; the child runs the callable and always leaves with ``os._exit`` in a
``finally`` (never the parent's ``finally`` blocks or atexit handlers); the parent
gets ``poll``, ``wait``, ``kill`` and ``returncode`` (negative: killed by that
signal, as in ``subprocess.Popen``), and the child's one JSON message through a
pipe. The message is read as it comes, never by waiting for end-of-file
(processes the callable forks may hold the pipe open).

The child dies with the parent (PR_SET_PDEATHSIG, prctl(2)) and, with
``new_group``, leads a process group of its own so that ``kill`` also ends what
it forked. Importing this module starts no thread and opens nothing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable

from .outcome import signal_of_returncode
from .watch import set_parent_death_signal

__all__ = ["ForkedCall", "MESSAGE_LIMIT", "KILL_WAIT"]

MESSAGE_LIMIT = 8000  # bytes the child may send back (well under a pipe's 64 KiB buffer)
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed child to be reaped (only a disk wait, state D, delays it)


class ForkedCall:
    """One forked child running ``target()``; use ``start()``, then ``poll``/``wait``.

    target: called in the child with no arguments; returns the message, a dict
      that json.dumps can write (``default=str``). Raising (anything, even
      SystemExit) sends ``{"status": "error", "error": "Type: text", "traceback": ...}``
      and exits with ``error_code``; returning exits 0.
    new_group: the child calls setpgid(0, 0) (and the parent too, so the group
      exists before it may have to be killed).
    fork: the function that forks (default ``os.fork`` at start time; the checker
      passes ``forksafety.guard.real_fork``, which strict mode does not wrap).
    """

    def __init__(self, target: Callable[[], dict], *, new_group: bool = False, error_code: int = 1,
                 message_limit: int = MESSAGE_LIMIT, fork: Callable[[], int] | None = None) -> None:
        self.target = target
        self.new_group = new_group
        self.error_code = error_code
        self.message_limit = message_limit
        self.fork = fork
        self.pid: int | None = None
        self.returncode: int | None = None
        self.lost = False  # waitpid said "no such child": someone else reaped it
        self.started_at: float | None = None  # time.monotonic() just after the fork
        self.parent_pid = os.getpid()
        self._read_end: int | None = None
        self._poller: select.poll | None = None
        self._inbox = bytearray()

    # -- the child ---------------------------------------------------------------------------
    def _child(self, read_end: int, write_end: int) -> None:
        """Run in the forked child: call the target, write the message, ``os._exit``."""
        code = self.error_code
        me = os.getpid()
        try:
            message: dict
            try:
                os.close(read_end)
                if self.new_group:
                    os.setpgid(0, 0)
                set_parent_death_signal(signal.SIGKILL)
                if os.getppid() != self.parent_pid:  # the parent died before the prctl
                    os._exit(self.error_code)
                for sig in (signal.SIGINT, signal.SIGTERM):  # the parent's handlers are not ours
                    signal.signal(sig, signal.SIG_DFL)
                message = self.target()
                code = 0
            except BaseException as exc:  # noqa: BLE001 - report anything, even SystemExit
                code = self.error_code
                message = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000],
                           "traceback": traceback.format_exc()[-4000:]}
            if os.getpid() == me:  # a process the target forked, returning here, reports nothing
                data = json.dumps(message, default=str).encode()
                if len(data) > self.message_limit:
                    message.pop("traceback", None)
                    data = json.dumps(message, default=str).encode()[:self.message_limit]
                os.write(write_end, data + b"\n")
        finally:
            os._exit(code)

    # -- the parent --------------------------------------------------------------------------
    def start(self) -> int:
        """Fork; returns the child's pid (in the parent; the child never returns)."""
        read_end, write_end = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = (self.fork or os.fork)()
        if pid == 0:
            self._child(read_end, write_end)
        self.pid = pid
        self.started_at = time.monotonic()
        os.close(write_end)
        if self.new_group:
            try:
                os.setpgid(pid, pid)
            except OSError:  # the child did it already, or has exited
                pass
        os.set_blocking(read_end, False)
        self._read_end = read_end
        self._poller = select.poll()  # poll, not select: the process may hold more than FD_SETSIZE descriptors
        self._poller.register(read_end, select.POLLIN)
        return pid

    def _take(self) -> None:
        """Append what the pipe holds now to the inbox, up to the first newline; never waits."""
        if self._read_end is None:
            return
        while b"\n" not in self._inbox and len(self._inbox) <= self.message_limit:
            try:
                chunk = os.read(self._read_end, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self._inbox += chunk

    @property
    def message(self) -> dict:
        """The child's JSON message (its first line), {} when it sent none or a broken one."""
        self._take()
        line = bytes(self._inbox).split(b"\n", 1)[0]
        try:
            data = json.loads(line or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def poll(self) -> int | None:
        """The child's return code once it ended (reaping it: waitpid WNOHANG), else None.
        Negative: killed by that signal. Reads the pipe either way."""
        self._take()
        if self.returncode is not None or self.pid is None or self.lost:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.lost = True
            return None
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            self._take()  # the child has exited: whatever it wrote is in the pipe now
        return self.returncode

    def wait_readable(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less when the child writes (the watch loop's pause)."""
        if self._poller is None or b"\n" in self._inbox or len(self._inbox) > self.message_limit:
            time.sleep(timeout)
        else:
            self._poller.poll(int(timeout * 1000))

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the child to end; its return code, or None."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and not self.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def kill(self, wait: float = KILL_WAIT) -> None:
        """SIGKILL the child (and, with ``new_group``, its process group) and reap it,
        waiting at most ``wait`` seconds. No-op once it has ended. Idempotent."""
        if self.pid is None or self.poll() is not None or self.lost:
            return
        if self.new_group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(wait)

    @property
    def signal_name(self) -> str | None:
        """``SIGKILL`` & co when the child was killed by a signal, else None."""
        return signal_of_returncode(self.returncode)

    def close(self) -> None:
        """Close our end of the pipe (the child is not touched; ``kill`` it first)."""
        if self._read_end is not None:
            try:
                os.close(self._read_end)
            except OSError:
                pass
            self._read_end = None
            self._poller = None
