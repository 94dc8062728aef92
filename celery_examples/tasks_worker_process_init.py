"""Fix variant ``worker-process-init``: the store is created in each prefork pool
child, after the fork, from Celery's ``worker_process_init`` signal.

Celery kills a child whose ``worker_process_init`` handlers take longer than
``worker_proc_alive_timeout`` (default 4.0 s, celery/app/defaults.py): keep the
handler fast.
Opening an embedded Chroma store takes well under a second; do no network call
or model download here.

Run by hand:  celery -A celery_examples.tasks_worker_process_init worker --pool prefork
"""

from celery.signals import worker_process_init
from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings()
app = make_app("tasks_worker_process_init")
vector_store = None  # created per pool child, after the fork


@worker_process_init.connect
def open_store(**_kwargs) -> None:
    """In each pool child, after the fork: open the store (fast: well under 4 s)."""
    global vector_store
    vector_store = make_store(settings)


@app.task(name="celery_examples.tasks_worker_process_init.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text; return ``{"ids": [...], "texts": [...]}``."""
    if vector_store is None:
        raise RuntimeError("the store was not opened: worker_process_init did not run in this process "
                           "(this variant is for the prefork pool)")
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    return {"ids": vector_store.add_documents(documents), "texts": texts}
