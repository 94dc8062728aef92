"""The known-origins table (``threadorigins.json``): who starts a thread, who owns a
shared object or a live object, whether it is safe across fork(), the fix and the source.

The one loader for every user of the table: the checker (``forksafety.check``)
and the evidence writer (``forksafety.capture``). Foundation layer: imports
nothing of ours but ``errors``. Every entry carries a ``source`` (a library's
docs or a file in its source tree).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ForkSafetyError

__all__ = ["ORIGINS_FILE", "OriginEntry", "Origins", "load_origins"]

ORIGINS_FILE = Path(__file__).with_name("threadorigins.json")


@dataclass(frozen=True)
class OriginEntry:
    """One row of ``threadorigins.json``.

    kind: "thread" (matched on the thread name), "library" (on the shared object
    running the thread), "python_thread" (on the Python target), "object" (a
    Python type), "generic". safety: "unsafe", "risk" or "handled".
    switch: optional ``{"env", "values", "safety", "note"}``: when the
    environment variable ``env`` has one of ``values``, the library behaves
    differently and ``safety`` applies instead.
    """

    kind: str
    match: str
    origin: str
    safety: str
    fix: str
    source: str
    library: str = ""
    note: str = ""
    switch: dict | None = None
    packages: tuple[str, ...] = ()

    def effective(self, environ: dict[str, str] | None = None) -> tuple[str, str]:
        """``(safety, note)`` for this entry under ``environ`` (default os.environ)."""
        env = os.environ if environ is None else environ
        if self.switch:
            value = (env.get(self.switch["env"]) or "").strip().lower()
            if value in [v.lower() for v in self.switch.get("values", [])]:
                return self.switch["safety"], self.switch.get("note", "")
        return self.safety, self.note


@dataclass(frozen=True)
class Origins:
    """The parsed table: entries by kind, in file order (first match wins)."""

    threads: tuple[OriginEntry, ...]
    libraries: tuple[OriginEntry, ...]
    python_threads: tuple[OriginEntry, ...]
    objects: tuple[OriginEntry, ...]
    generic: dict[str, OriginEntry]

    def for_thread_name(self, name: str) -> OriginEntry | None:
        """The entry whose ``match`` matches the start of thread name ``name``."""
        return next((e for e in self.threads if re.match(e.match, name)), None)

    def for_library(self, library: str) -> OriginEntry | None:
        """The entry whose ``match`` occurs in shared-object file name ``library``."""
        return next((e for e in self.libraries if re.search(e.match, library)), None)

    def for_package(self, package: str) -> OriginEntry | None:
        """The library entry listing Python package ``package`` (e.g. numpy -> OpenBLAS):
        used for unnamed threads first seen while that package's code ran."""
        return next((e for e in self.libraries if package in e.packages), None)

    def for_python_target(self, target: str) -> OriginEntry | None:
        """The entry matching a Python thread's target (``module.qualname``)."""
        return next((e for e in self.python_threads if re.match(e.match, target)), None)


@lru_cache(maxsize=4)
def load_origins(path: str | None = None) -> Origins:
    """Read and check ``threadorigins.json`` (or ``path``).

    Raises ForkSafetyError when the file is missing, not JSON, or an entry
    lacks one of match/type, origin, safety, fix, source.
    """
    file = Path(path) if path else ORIGINS_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ForkSafetyError(f"cannot read the known-origins table {file} ({exc})",
                              "reinstall forksafety, or fix the JSON") from None

    def entries(section: str, kind: str, key: str = "match") -> tuple[OriginEntry, ...]:
        out = []
        for i, raw in enumerate(data.get(section, [])):
            missing = [k for k in (key, "origin", "safety", "fix", "source") if not raw.get(k)]
            if missing or raw["safety"] not in ("unsafe", "risk", "handled"):
                lacks = ", ".join(missing) or "a valid safety"
                raise ForkSafetyError(f"{file}: entry {i} of {section!r} lacks {lacks}",
                                      "every entry needs match/type, origin, safety, fix and source")
            out.append(OriginEntry(kind=kind, match=raw[key], origin=raw["origin"],
                                   safety=raw["safety"], fix=raw["fix"], source=raw["source"],
                                   library=raw.get("library", ""), note=raw.get("note", ""),
                                   switch=raw.get("switch"), packages=tuple(raw.get("packages", ()))))
        return tuple(out)

    generic = {}
    for name, raw in data.get("generic", {}).items():
        generic[name] = OriginEntry(kind="generic", match=name, origin=name, safety=raw["safety"],
                                    fix=raw["fix"], source=raw["source"])
    return Origins(threads=entries("threads", "thread"), libraries=entries("libraries", "library"),
                   python_threads=entries("python_threads", "python_thread"),
                   objects=entries("objects", "object", key="type"), generic=generic)
