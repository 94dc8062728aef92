"""The bug, as users wrote it: a ChromaDB vector store created at module level.

WARNING: importing this module starts ChromaDB's Tokio runtime and SQLite worker
threads (on purpose). A Celery ``prefork`` worker imports it in its main process
and then forks its pool children; the child that runs ``add_documents_task``
inherits the store's state but none of those threads, and deadlocks on Linux.

Run by hand:  celery -A celery_examples.tasks_pool_test worker --pool prefork
"""

from langchain_chroma import Chroma
from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.embeddings import make_embeddings
from forksafety.settings import load_settings

settings = load_settings()
app = make_app("tasks_pool_test")

embeddings = make_embeddings(settings)
vector_store = Chroma(  # module level: created before the prefork pool forks
    collection_name=settings.collection_name,
    embedding_function=embeddings,
    persist_directory=str(settings.chroma_dir),
)


@app.task(name="celery_examples.tasks_pool_test.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text to the store; return ``{"ids": [...], "texts": [...]}``.

    Errors are raised (the task fails), never swallowed into a success.
    """
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    ids = vector_store.add_documents(documents)
    return {"ids": ids, "texts": texts}
