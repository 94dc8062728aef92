"""Chroma's own escape hatches from the embedded Rust core, and what we expect of them.

* ``segment-api``: ``chromadb.Settings(chroma_api_impl="chromadb.api.segment.SegmentAPI")``
  (the pre-Rust Python implementation; chromadb/api/segment.py). Whether it can run
  is decided by the installed packages, read without importing chromadb
  (``segment_api_missing``).
* ``chroma-server``: a real ``chroma run`` (forksafety/chromaserver.py) and
  ``chromadb.HttpClient`` at module level.

Expected outcomes (this module) are what we measured on Linux with our pins;
see docs/FIXES.md.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from .outcome import Expected, Outcome

SEGMENT_API = "chromadb.api.segment.SegmentAPI"


def segment_api_missing() -> str | None:
    """Why ``SEGMENT_API`` cannot run here, or None when it can. Reads only package
    metadata and module specs (imports no chromadb): the module file
    ``chromadb/api/segment.py`` must exist, and ``hnswlib`` (chroma-hnswlib), which its
    local vector segment imports (chromadb/segment/impl/vector/local_hnsw.py), must be
    installed; chromadb 1.x lists chroma-hnswlib only in its ``dev`` extra."""
    try:
        version = metadata.version("chromadb")
    except metadata.PackageNotFoundError:
        return "chromadb is not installed"
    spec = importlib.util.find_spec("chromadb")  # a top-level spec: chromadb is not imported
    if spec is None or not spec.submodule_search_locations:
        return "chromadb is not importable"
    if not (Path(list(spec.submodule_search_locations)[0]) / "api" / "segment.py").exists():
        return f"chromadb {version} has no chromadb/api/segment.py ({SEGMENT_API} is gone)"
    if importlib.util.find_spec("hnswlib") is None:
        return (f"chromadb {version} keeps {SEGMENT_API}, but it imports hnswlib (package chroma-hnswlib), "
                f"which chromadb {version} installs only with its dev extra, and this environment lacks")
    return None


def expected_segment_api() -> Expected:
    """ERROR (not available) when ``segment_api_missing()`` says so, else PASS: no Rust
    runtime threads exist before the fork (measured: see docs/FIXES.md)."""
    return Expected(Outcome.ERROR) if segment_api_missing() else Expected(Outcome.PASS)
