"""RQ's documented custom worker script that preloads libraries before ``work()``
(python-rq.org/docs/workers: "Performance notes"), with the job module imported
first, as that page suggests for expensive imports.

WARNING: running this script imports ``rq_jobs``, which starts ChromaDB's threads.

    python -m runner_examples.rq_preload_worker QUEUE [--worker-class Worker|SpawnWorker|SimpleWorker]
"""

from __future__ import annotations

import argparse
import os

from redis import Redis
from rq import Queue
from rq.worker import SimpleWorker, SpawnWorker, Worker

import runner_examples.rq_jobs  # noqa: F401 - the preload: the store is created here, before work()

CLASSES = {"Worker": Worker, "SpawnWorker": SpawnWorker, "SimpleWorker": SimpleWorker}


def main() -> int:
    """Start the worker on QUEUE (Redis at $REDIS_URL) until stopped."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("queue")
    p.add_argument("--worker-class", choices=sorted(CLASSES), default="Worker")
    args = p.parse_args()
    connection = Redis.from_url(os.environ["REDIS_URL"])
    worker = CLASSES[args.worker_class]([Queue(args.queue, connection=connection)], connection=connection)
    worker.work()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
