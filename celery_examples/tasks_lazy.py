"""Fix variant ``lazy``: no module-level store; each process creates its own on
first use, and a process that finds a store made by another pid makes a new one.

Run by hand:  celery -A celery_examples.tasks_lazy worker --pool prefork
"""

import os
import threading

from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings()
app = make_app("tasks_lazy")
_store = None
_store_pid = None
_lock = threading.Lock()


def get_store():
    """The store of this process, created on first use (after any fork)."""
    global _store, _store_pid
    with _lock:
        if _store is None or _store_pid != os.getpid():
            _store = make_store(settings)
            _store_pid = os.getpid()
        return _store


@app.task(name="celery_examples.tasks_lazy.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text; return ``{"ids": [...], "texts": [...]}``."""
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    return {"ids": get_store().add_documents(documents), "texts": texts}
