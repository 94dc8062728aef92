"""User apps for the runner matrix (``scripts/run_runners.py``): the same bug as the
Celery task module, a ChromaDB store created at module level, served or run by
Gunicorn, uWSGI, uvicorn + Celery (the report's FastAPI app), RQ, Huey, Dramatiq and
multiprocessing. Each module says at its top whether importing it starts threads.
"""
