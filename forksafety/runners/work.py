"""The work-dir protocol between a runner example and the runner matrix.

The example (user code under ``runner_examples/``) writes, in ``$FORKSAFETY_WORK_DIR``:
``started-<pid>.json`` just before it touches the store (``{"pid", "time"}``: which
process runs the work and when, time.time() seconds) and ``done-<pid>.json`` with
its result after. The runner reads them (``started``, ``finished``). Without the
variable (run by hand) nothing is written. Importing this module starts nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

WORK_DIR_ENV = "FORKSAFETY_WORK_DIR"
# what every example adds to its store (runner_examples.common), and the runner expects back
DEFAULT_TEXTS = ["fork-safety check: first document", "fork-safety check: second document"]


def _write(kind: str, record: dict) -> None:
    folder = os.environ.get(WORK_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"{kind}-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def announce_started() -> None:
    """Tell the runner this process is about to touch the store (pid, wall time)."""
    _write("started", {"pid": os.getpid(), "time": time.time()})


def announce_done(result: dict) -> None:
    """Tell the runner this process finished the work with ``result``."""
    _write("done", {"pid": os.getpid(), "time": time.time(), "result": result})


def _read_all(folder: Path, kind: str) -> list[dict]:
    found = []
    for path in sorted(folder.glob(f"{kind}-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written: the next look reads it
    return found


def started(folder: Path) -> dict | None:
    """The first ``started`` record in ``folder`` (``{"pid", "time"}``), or None."""
    records = _read_all(folder, "started")
    return min(records, key=lambda r: r["time"]) if records else None


def finished(folder: Path) -> dict | None:
    """The first ``done`` record in ``folder`` (``{"pid", "time", "result"}``), or None."""
    records = _read_all(folder, "done")
    return min(records, key=lambda r: r["time"]) if records else None
