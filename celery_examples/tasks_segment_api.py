"""Fix variant ``segment-api``: the module-level store uses Chroma's Python segment API,
``chromadb.Settings(chroma_api_impl="chromadb.api.segment.SegmentAPI")``, instead of the
Rust bindings (``chromadb.api.rust.RustBindingsAPI``, the 1.x default, chromadb/config.py).

chromadb 1.5.9 still has ``chromadb/api/segment.py``, but its local vector segment
imports ``hnswlib`` (package chroma-hnswlib), which chromadb 1.x lists only in its
``dev`` extra. Without it this module stops the worker with a one-line
"not available" error (forksafety.escapes.segment_api_missing) instead of pretending.

WARNING: importing this module opens the store (SQLite) at module level, on purpose.

Run by hand:  celery -A celery_examples.tasks_segment_api worker --pool prefork
"""

import chromadb
from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.escapes import SEGMENT_API, segment_api_missing
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings()
app = make_app("tasks_segment_api")
missing = segment_api_missing()
if missing:
    raise RuntimeError(f"not available: {missing}")
settings.chroma_dir.mkdir(parents=True, exist_ok=True)
client = chromadb.PersistentClient(  # module level: before the fork, as in the bug
    path=str(settings.chroma_dir),
    settings=chromadb.Settings(chroma_api_impl=SEGMENT_API, is_persistent=True,
                               persist_directory=str(settings.chroma_dir), anonymized_telemetry=False),
)
vector_store = make_store(settings, client=client)


@app.task(name="celery_examples.tasks_segment_api.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text; return ``{"ids": [...], "texts": [...]}``."""
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    return {"ids": vector_store.add_documents(documents), "texts": texts}
