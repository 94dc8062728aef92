"""Variant ``lazy-in-task``: the "fix" many users try first. The module-level
store stays (created before the fork, as in tasks_pool_test.py) *and* the task
creates a new store for the same ``persist_directory``.

WARNING: importing this module starts ChromaDB's threads (on purpose).

Run by hand:  celery -A celery_examples.tasks_lazy_in_task worker --pool prefork
"""

from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings()
app = make_app("tasks_lazy_in_task")
vector_store = make_store(settings)  # module level, before the fork, as in the bug


@app.task(name="celery_examples.tasks_lazy_in_task.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Create a new store for the same folder in the task, then add the documents."""
    store = make_store(settings)
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    return {"ids": store.add_documents(documents), "texts": texts}
