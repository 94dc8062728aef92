"""A Dramatiq actor module with the bug pattern: the store is created at module level.

WARNING: importing this module starts ChromaDB's threads (on purpose). The
``dramatiq`` command imports it in each worker process (dramatiq/cli.py:
``worker_process`` calls ``import_broker``), not in the main process that starts them.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from runner_examples.common import add_documents, open_store

dramatiq.set_broker(RedisBroker(url=os.environ.get("REDIS_URL")))
vector_store = open_store()  # module level


@dramatiq.actor(queue_name=os.environ.get("DRAMATIQ_QUEUE", "forksafety"), max_retries=0)
def add_documents_actor(texts: list[str]) -> None:
    """Add one document per text (the result goes to the runner's work folder)."""
    add_documents(vector_store, texts)
