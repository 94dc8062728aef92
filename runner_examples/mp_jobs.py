"""A job module with the bug, for multiprocessing: the store is created at module level.

WARNING: importing this module starts ChromaDB's threads (on purpose). The main
script (``mp_main.py``) imports it, so the parent holds the store before its Pool
or ProcessPoolExecutor starts workers.
"""

from __future__ import annotations

from runner_examples.common import add_documents, open_store

vector_store = open_store()  # module level: created in every process that imports this module


def add_documents_job(texts: list[str]) -> dict:
    """The work a pool worker runs: add one document per text, return the ids."""
    return add_documents(vector_store, texts)
