"""Helpers every CLI shares: one-line argparse errors, error printing, signal handling."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from .errors import ForkSafetyError, Interrupted, UsageError, exit_code_of  # noqa: F401 - Interrupted: cli.Interrupted
from .variants import resolve_variant

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away


# Ctrl-C, kill's default, and the terminal closing (or the ssh session dropping)
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def install_interrupt_handlers() -> None:
    """Turn the first SIGINT, SIGTERM or SIGHUP into ``Interrupted`` in the main thread.

    Later ones are ignored, so a second Ctrl-C cannot cut the clean-up short
    (every wait in the clean-up is bounded). A signal ignored when we started stays
    ignored (``nohup`` ignores SIGHUP so the run outlives its terminal).
    """

    def handler(signum, _frame):
        for s in INTERRUPT_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    for s in INTERRUPT_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, handler)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, how to see usage) and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def stdout_closed(prog: str = "") -> int:
    """After a BrokenPipeError (output piped into `head` & co): point stdout at /dev/null so the
    interpreter's final flush stays quiet (Python docs, signal module notes), say so in one
    line on stderr, and return EXIT_STDOUT_CLOSED (141, as a shell reports SIGPIPE), not 1,
    which means an outcome did not match."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    prefix = f"{prog}: " if prog else ""
    try:
        sys.stderr.write(f"{prefix}stopped: the output was closed (piped into head?); "
                         "every process of this run was stopped\n")
    except OSError:
        pass
    return EXIT_STDOUT_CLOSED


def fail(error: ForkSafetyError | str, code: int | None = None, prog: str = "") -> int:
    """Print ``error`` as one line on stderr and return ``code`` (default: the error's
    own exit code, ``errors.exit_code_of``; 2 for a plain message)."""
    if code is None:
        code = exit_code_of(error) if isinstance(error, BaseException) else EXIT_USAGE
    prefix = f"{prog}: " if prog else ""
    sys.stderr.write(f"{prefix}error: {error}\n")
    return code


MIN_SECONDS, MAX_SECONDS = 0.5, 3600.0  # bounds of every duration option (--timeout, --stall, ...)


def seconds_type(low: float = MIN_SECONDS, high: float = MAX_SECONDS):
    """argparse type factory, the one validator of durations: a number of seconds in
    [``low``, ``high``] (default 0.5 to 3600: a shorter wait cannot tell a stuck child
    from one still starting; a longer one is a typo)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not value > 0 or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds ({low:g} to {high:g})")
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low:g} seconds: a shorter wait "
                                             f"cannot tell a stuck child from one still starting")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {high:g} seconds")
        return value

    return parse


positive_float = seconds_type()  # argparse type: seconds, MIN_SECONDS to MAX_SECONDS (the name CLIs used)


def int_range(high: int | None = None):
    """argparse type factory: an integer >= 1 (and <= ``high`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {high}")
        return value

    return parse


positive_int = int_range()  # argparse type: an integer >= 1


def variant_type(product: str):
    """argparse type factory, the one validator of ``--variant``: a name (or an older alias)
    from ``variants.VOCABULARY`` that ``product`` (``variants.CELERY`` or ``variants.DEMO``)
    runs; returns the one spelling. The error says which product runs a name this one does not."""

    def parse(text: str) -> str:
        try:
            return resolve_variant(text, product)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def path_arg(text: str) -> Path:
    """argparse type: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not allowed: give a folder or file name")
    return Path(text)


class OnceAction(argparse.Action):
    """Store an option's value; the same option given again with another value is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_given_{self.dest}"
        before = getattr(namespace, seen, None)
        if before is not None and before != values:
            parser.error(f"{option_string} given twice ({before} and {values}): give it once")
        setattr(namespace, seen, values)
        setattr(namespace, self.dest, values)


def file_above(path: Path) -> Path | None:
    """The nearest existing parent of ``path`` that is not a folder (None when there is none)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path: Path, option: str = "--json") -> bool:
    """The one validator of output files. Checks, before any work, that ``path`` can
    take a record: not a folder, not a symbolic link, device or FIFO (the record
    replaces the file by rename), not under a file, in a writable folder (created if
    missing), itself writable when it exists. Returns True when a file is already
    there (it will be replaced: say so). Raises UsageError or SettingsError (exit 2)."""
    from .settings import check_writable

    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder", f"pass a file path, e.g. {option} {path / 'record.json'}")
    # the record replaces the file by rename: it would replace the link, not its target, and a
    # device or FIFO by a plain file (as root, --json /dev/null would replace the machine's /dev/null)
    if path.is_symlink():
        raise UsageError(f"{option} {path} is a symbolic link", f"pass the file it points to ({path.resolve()})")
    if path.exists() and not path.is_file():
        raise UsageError(f"{option} {path} is not a regular file", "pass a file path (the record replaces the file)")
    above = file_above(path)
    if above is not None:
        raise UsageError(f"{option} {path}: {above} is not a folder",
                         f"so the {option} folder is not writable: pass a path in a folder")
    check_writable(path.parent, what=f"the folder of {option}", fix=f"choose a {option} folder you can write to")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} is not writable", "pass another file path, or make it writable")
    return path.exists()


def check_log_dir(path: Path, create: bool = True, option: str = "--log-dir") -> None:
    """The one validator of log folders. Checks, before any work, that ``path`` is (or
    can become) a writable folder for logs and evidence; with ``create``, creates it.
    Raises UsageError or SettingsError (exit 2)."""
    from .settings import check_writable

    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder", "pass a folder (it is created if missing)")
    above = file_above(path)
    if above is not None:
        raise UsageError(f"{option} {path}: {above} is not a folder", "pass a folder (it is created if missing)")
    if create:
        check_writable(path, what=option, fix=f"pass {option} a folder you can write to")


def hold_log_dir(path: Path, prog: str, option: str = "--log-dir") -> int:
    """Take log folder ``path`` for this run, until this process exits: an exclusive
    flock(2) on ``path/.<prog>.lock`` holding our pid (the kernel drops it when the
    process ends, SIGKILL included). Two runs at once writing the same fixed log names
    would overwrite each other's logs (and read each other's lines). Call after
    ``check_log_dir``. Returns the lock's file descriptor (keep it open). Raises
    UsageError (exit 2) when another run holds the folder."""
    import fcntl

    fd = os.open(path / f".{Path(prog).stem}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UsageError(f"another {prog} run (pid {holder}) is writing its logs to {path}",
                         f"wait for it to end, or pass another {option}") from None
    except OSError:  # a file system without flock(2) (some network mounts): run unguarded
        return fd
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def say(text: str) -> None:
    """Print one progress line now (output is read live by users and tests)."""
    print(text, flush=True)


def written(path: Path, replaced: bool) -> None:
    """Say where the record went, and that an existing file was replaced (never silently)."""
    say(f"record written to {path}" + (" (replaced the previous file)" if replaced else ""))


def quiet_signals():
    """Ignore SIGINT/SIGTERM/SIGHUP while cleaning up, so a second Ctrl-C cannot cut the
    cleanup short (main thread only: signal.signal's rule). Returns the function that restores them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in INTERRUPT_SIGNALS}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def remove_stale_strace_folders(tmp: Path | None = None) -> list[Path]:
    """Remove the temporary folders ``forksafety-strace-<pid>-*`` of demo --strace runs
    that were killed (their pid is gone). Returns the folders removed."""
    from .watch import remove_stale_temp_folders

    return remove_stale_temp_folders(tmp, kinds=("strace",))


def stale_temp_line(folders: list[Path], runs: str = "killed runs") -> str:
    """The one line saying which temporary folders (``forksafety-<kind>-<pid>-*``, see
    watch.TEMP_KINDS) were removed because the run that made them was killed: their paths,
    so a user sees what went from the temporary folder."""
    return f"removed {len(folders)} temporary folder(s) left by {runs}: {', '.join(str(f) for f in folders)}"


def sweep_leftovers(chroma_dir: Path, strace_tmp: bool = True) -> None:
    """Remove what killed demo runs left (Chroma folders, processes their tools started,
    --strace temporary folders), one line each (the demo and debugger scripts run it first)."""
    from .demo import remove_stale_demo_folders
    from .watch import sweep_orphans

    stale = remove_stale_demo_folders(chroma_dir)
    if stale:
        say(f"removed {len(stale)} Chroma folder(s) left by killed demo runs under {chroma_dir}: "
            f"{', '.join(f.name for f in stale)}")
    orphans = sweep_orphans()
    if orphans:
        say(f"stopped {len(orphans)} process(es) left by killed runs (tools they started): "
            f"{', '.join(map(str, orphans))}")
    if strace_tmp:
        tmp = remove_stale_strace_folders()
        if tmp:
            say(stale_temp_line(tmp, "killed --strace runs"))


def make_console():
    """A rich Console; 140 columns when the output is not a terminal (logs, CI). When its
    reader goes away (piped into `head`), it raises BrokenPipeError for the CLI to end with
    ``stdout_closed`` (exit 141 and one line on stderr), instead of rich's default
    ``Console.on_broken_pipe``, which exits 1 in silence (1 means an outcome did not match)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError  # every print raises until stdout_closed points stdout at /dev/null

    console = _Console(highlight=False)
    return console if console.is_terminal else _Console(highlight=False, width=140)


class Progress:
    """Live progress of the scenarios: a rich live table on a terminal, one line per
    status change otherwise (logs, CI). Thread-safe: scenario threads call it."""

    def __init__(self, console, names: list[str]) -> None:
        from rich.live import Live

        self.console = console
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.status = {name: ("waiting", None) for name in names}
        self.live = Live(self._table(), console=console, refresh_per_second=8, transient=True) \
            if console.is_terminal else None

    def _table(self):
        from rich.table import Table

        table = Table(box=None, show_header=False)
        for name, (status, since) in self.status.items():
            elapsed = f"{time.monotonic() - since:5.1f}s" if since is not None and status != "done" else ""
            table.add_row(name, status, elapsed)
        return table

    def __enter__(self) -> "Progress":
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()

    def __call__(self, name: str, status: str) -> None:
        with self.lock:
            since = self.status.get(name, (None, None))[1] or time.monotonic()
            self.status[name] = (status, since)
            if self.live:
                self.live.update(self._table())
            else:
                self.console.print(f"[dim]{time.monotonic() - self.t0:5.1f}s[/] {name:<32} {status}",
                                   highlight=False)




def print_results(console, verdicts: list, wall: float, log_dir: Path, table) -> bool:
    """Print a matrix's results: ``table`` (report.results_table), how many matched
    the expected outcome in ``wall`` seconds, where the evidence of each HANG is and
    which logs to read for each ERROR. Returns True when every outcome matched."""
    from .outcome import Outcome

    console.print(table)
    console.print(f"{sum(v.matched for v in verdicts)}/{len(verdicts)} matched the expected outcome "
                  f"in {wall:.1f} s; worker logs in {log_dir}/")
    for v in verdicts:
        if v.evidence and v.evidence.get("log"):
            console.print(f"  {v.scenario}: evidence in {v.evidence['log']}")
        if v.outcome is Outcome.ERROR and v.worker_log:
            console.print(f"  {v.scenario}: ERROR, see {v.worker_log}")
    return all(v.matched for v in verdicts)


def write_results(console, path: Path, record: dict) -> None:
    """Write a results record (report.write_json) and say where, and whether a file was replaced."""
    from .report import write_json

    replaced = path.exists()
    write_json(path, record)
    console.print(f"results written to {path.resolve()}" + (" (replaced the previous file)" if replaced else ""))


def run_interruptible(prog: str, work, *args) -> int:
    """Install the interrupt handlers, then return ``work(*args)``; Ctrl-C or SIGTERM
    becomes one line on stderr and exit 130 (every ``finally`` of ``work`` has run, so
    everything it started was stopped), a ForkSafetyError one line with its own code."""
    install_interrupt_handlers()
    try:
        return work(*args)
    except Interrupted as exc:
        sys.stderr.write(f"{prog}: interrupted by {exc}: every process of this run was stopped\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_closed(prog)
    except ForkSafetyError as exc:
        return fail(exc, prog=prog)
