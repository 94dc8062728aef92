"""Case: a ChromaDB vector store (langchain_chroma.Chroma) created at import,
the bug this repository reproduces (celery_examples/tasks_pool_test.py).

WARNING: importing this module starts ChromaDB's Tokio runtime and SQLite
worker threads (on purpose). Offline: fake embeddings, whatever .env says.
"""

import os

from langchain_core.documents import Document

from forksafety.cases import scratch_dir
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings({**os.environ, "PROVIDER": "fake", "API_KEY": ""})
vector_store = make_store(settings, scratch_dir() / "chroma")
vector_store.add_documents([Document(page_content="added by the parent, before the fork")])


def use() -> int:
    """Add a document from the child; return how many ids came back."""
    return len(vector_store.add_documents([Document(page_content="added by the forked child")]))
