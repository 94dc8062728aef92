"""The Gunicorn ``post_fork`` fix: the module opens nothing at import; the hook in
``gunicorn_post_fork.conf.py`` opens the store in each worker, after the fork.
``--preload`` can stay (the master imports this module and gets no store).

Importing this module starts no thread.
"""

from __future__ import annotations

from runner_examples.common import DEFAULT_TEXTS, add_documents, open_store, respond

vector_store = None  # opened per worker by open_worker_store()


def open_worker_store() -> None:
    """Open the store in this process (called from Gunicorn's post_fork hook)."""
    global vector_store
    vector_store = open_store()


def application(environ, start_response):
    """POST /documents: add the two default documents, answer with their ids."""
    if environ.get("PATH_INFO") != "/documents":
        return respond(start_response, "404 Not Found", {"error": "POST /documents"})
    return respond(start_response, "200 OK", add_documents(vector_store, DEFAULT_TEXTS))
