"""Gunicorn config for the post_fork fix (``gunicorn -c runner_examples/gunicorn_post_fork.conf.py``).

post_fork(server, worker) runs in the worker just after the fork (Gunicorn's
server hooks), so the store is opened in the process that uses it.
"""


def post_fork(server, worker):
    """Open the store in the freshly forked worker."""
    from runner_examples import wsgi_app_post_fork

    wsgi_app_post_fork.open_worker_store()
