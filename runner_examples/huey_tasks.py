"""A Huey task module with the bug: the store is created at module level.

WARNING: importing this module starts ChromaDB's threads (on purpose).
``huey_consumer runner_examples.huey_tasks.huey -k process`` imports it in the
consumer's main process, then forks the worker processes (huey/consumer.py:
``multiprocessing.get_context('fork')``).
"""

from __future__ import annotations

import os

from huey import RedisHuey

from runner_examples.common import add_documents, open_store

huey = RedisHuey(os.environ.get("HUEY_NAME", "forksafety"), url=os.environ.get("REDIS_URL"))
vector_store = open_store()  # module level


@huey.task()
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text, return the ids."""
    return add_documents(vector_store, texts)
