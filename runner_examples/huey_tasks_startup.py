"""The Huey fix: the store is opened by an ``@huey.on_startup()`` hook, which the
consumer runs in each worker when it starts (after the fork for ``-k process``).

Importing this module starts no thread.
"""

from __future__ import annotations

import os

from huey import RedisHuey

from runner_examples.common import add_documents, open_store

huey = RedisHuey(os.environ.get("HUEY_NAME", "forksafety"), url=os.environ.get("REDIS_URL"))
vector_store = None  # opened per worker by open_worker_store()


@huey.on_startup()
def open_worker_store() -> None:
    """In each worker, when it starts: open the store."""
    global vector_store
    vector_store = open_store()


@huey.task()
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text, return the ids."""
    return add_documents(vector_store, texts)
