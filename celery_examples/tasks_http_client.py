"""Fix variant ``chroma-server``: the module-level store talks to a real Chroma server
(``chroma run``, started by the harness) through ``chromadb.HttpClient``, created at
module level before the prefork pool forks. The worker holds an HTTP client, not
the embedded Rust runtime and its threads.

Run by hand:  chroma run --host 127.0.0.1 --port 8000 --path chroma_server_data &
              FORKSAFETY_CHROMA_HOST=127.0.0.1 FORKSAFETY_CHROMA_PORT=8000 \\
              celery -A celery_examples.tasks_http_client worker --pool prefork
"""

import chromadb
from langchain_core.documents import Document

from forksafety.app import make_app
from forksafety.chromaserver import client_settings
from forksafety.settings import load_settings
from forksafety.store import make_store

settings = load_settings()
app = make_app("tasks_http_client")
host, port = client_settings()
client = chromadb.HttpClient(host=host, port=port)  # module level: before the fork, as in the bug
vector_store = make_store(settings, client=client)


@app.task(name="celery_examples.tasks_http_client.add_documents_task")
def add_documents_task(texts: list[str]) -> dict:
    """Add one document per text through the server; return ``{"ids": [...], "texts": [...]}``."""
    documents = [Document(page_content=text, metadata={"source": "celery"}) for text in texts]
    return {"ids": vector_store.add_documents(documents), "texts": texts}
