"""The report's app, replayed: a FastAPI app that sends ``add_documents_task.delay(...)``
to a Celery worker, and a status endpoint.

WARNING: importing this module imports the Celery task module named by
``FORKSAFETY_TASKS_MODULE`` (default ``celery_examples.tasks_pool_test``, the bug:
it creates the store at import, in this server process too, as the report's app did).

Run by hand:  uvicorn runner_examples.fastapi_app:app --port 8000
              curl -X POST 127.0.0.1:8000/documents ; curl 127.0.0.1:8000/status/<task_id>
"""

from __future__ import annotations

import importlib
import os

from fastapi import FastAPI

from runner_examples.common import DEFAULT_TEXTS

tasks = importlib.import_module(os.environ.get("FORKSAFETY_TASKS_MODULE", "celery_examples.tasks_pool_test"))
app = FastAPI(title="forksafety: the report's app")


@app.post("/documents")
def add_documents() -> dict:
    """Send the task; answer with its id at once."""
    result = tasks.add_documents_task.delay(DEFAULT_TEXTS)
    return {"task_id": result.id}


@app.get("/status/{task_id}")
def status(task_id: str) -> dict:
    """The task's state (PENDING, STARTED, SUCCESS, FAILURE), its result or error,
    and the pid of the pool child once it started (task_track_started)."""
    # one read of the task's meta: state and info read separately can disagree (PENDING, then
    # the STARTED meta), as each property asks the result backend again
    result = tasks.app.AsyncResult(task_id)
    meta = result.backend.get_task_meta(task_id)
    state, value = meta.get("status", "PENDING"), meta.get("result")
    body: dict = {"task_id": task_id, "state": state}
    if state == "SUCCESS":
        body["result"] = value
    elif state == "FAILURE":
        body["error"] = f"{type(value).__name__}: {value}"
    elif isinstance(value, dict):
        body["info"] = value
    return body
