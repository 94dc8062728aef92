"""What every runner example does with the store, and how it tells the runner.

The work: add one document per text to a ChromaDB store (real, embedded: Rust core,
Tokio runtime, SQLite worker threads), return ``{"ids", "texts", "pid"}``.

The runner is told through files in ``$FORKSAFETY_WORK_DIR`` (the protocol of
``forksafety.runners.work``): ``started-<pid>.json`` just before the store is touched
(which process runs the work, and when), ``done-<pid>.json`` with the result after.

Importing this module starts no thread; ``open_store()`` does (on purpose).
"""

from __future__ import annotations

import json
import os

from forksafety.runners.work import DEFAULT_TEXTS, announce_done, announce_started  # noqa: F401 - DEFAULT_TEXTS: the examples' texts
from forksafety.settings import load_settings
from forksafety.store import make_store


def open_store():
    """A LangChain Chroma store in ``CHROMA_DIR`` (starts ChromaDB's threads in this process)."""
    return make_store(load_settings())


def add_documents(store, texts: list[str]) -> dict:
    """Add one document per text to ``store``; announce start and result to the runner.

    Returns ``{"ids": [...], "texts": texts, "pid": os.getpid()}``. Raises what
    chromadb raises (never swallowed into a success).
    """
    from langchain_core.documents import Document

    if store is None:
        raise RuntimeError("the store was not opened in this process (its start-up hook did not run)")
    announce_started()
    ids = store.add_documents([Document(page_content=t, metadata={"source": "runner"}) for t in texts])
    result = {"ids": ids, "texts": list(texts), "pid": os.getpid()}
    announce_done(result)
    return result


def respond(start_response, status: str, body: dict) -> list[bytes]:
    """A WSGI JSON response (``status`` e.g. ``"200 OK"``)."""
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
