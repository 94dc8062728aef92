"""An RQ job module with the bug: the store is created at module level.

WARNING: importing this module starts ChromaDB's threads (on purpose).

``rq worker`` (the default Worker) does not import this module in the worker: the
work horse it forks for a job imports it (job.func), after the fork, so the store
is made in the process that uses it. ``rq_preload_worker.py`` (RQ's documented
"preload libraries" worker script) imports it before ``work()``: every horse is
then forked from a process that holds the store.
"""

from __future__ import annotations

from runner_examples.common import add_documents, open_store

vector_store = open_store()  # module level


def add_documents_job(texts: list[str]) -> dict:
    """The job: add one document per text, return the ids."""
    return add_documents(vector_store, texts)
