"""A WSGI app with the bug: the ChromaDB store is created at module level.

WARNING: importing this module starts ChromaDB's threads (on purpose). Served by
Gunicorn with ``--preload`` or by uWSGI without ``--lazy-apps``, the module is
imported in the master, which then forks the worker that serves the request: the
worker touches a store whose threads stayed in the master, and hangs.

Run by hand:  gunicorn --preload -w 1 -b 127.0.0.1:8000 runner_examples.wsgi_app:application
              curl -X POST 127.0.0.1:8000/documents
"""

from __future__ import annotations

from runner_examples.common import DEFAULT_TEXTS, add_documents, open_store, respond

vector_store = open_store()  # module level: created wherever the module is imported


def application(environ, start_response):
    """POST /documents: add the two default documents, answer with their ids."""
    if environ.get("PATH_INFO") != "/documents":
        return respond(start_response, "404 Not Found", {"error": "POST /documents"})
    return respond(start_response, "200 OK", add_documents(vector_store, DEFAULT_TEXTS))
