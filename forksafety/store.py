"""Settings -> a LangChain Chroma vector store (embedded client: Rust core + SQLite).

WARNING: calling ``make_store`` starts ChromaDB's Tokio runtime and SQLite worker
threads in the calling process. That is exactly the state that must not cross a
``fork()``; this module only does it when called, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .embeddings import make_embeddings
from .settings import Settings

if TYPE_CHECKING:
    from langchain_chroma import Chroma


def make_store(settings: Settings, persist_directory: Path | None = None, client=None) -> "Chroma":
    """Create (or open) the Chroma store in ``persist_directory``, or through ``client``.

    persist_directory: default ``settings.chroma_dir``. client: a chromadb client
    (e.g. ``chromadb.HttpClient``) to use instead of an embedded one.
    Raises chromadb's own errors (e.g. an invalid collection name).
    """
    from langchain_chroma import Chroma

    where = {"client": client} if client is not None else \
        {"persist_directory": str(persist_directory or settings.chroma_dir)}
    return Chroma(collection_name=settings.collection_name, embedding_function=make_embeddings(settings), **where)
