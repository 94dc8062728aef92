"""multiprocessing with the store created in the parent, as users write it.

WARNING: importing this script imports ``mp_jobs``, which starts ChromaDB's threads.

    python -m runner_examples.mp_main --start-method fork|spawn|forkserver [--executor pool|futures]

fork (Linux's default before Python 3.14): the worker is a copy of the parent and
hangs on the store. spawn: the worker is a new interpreter that imports ``mp_jobs``
itself. forkserver (Linux's default from Python 3.14): workers are forked from a
server process started fresh, which by default preloads ``__main__`` (this script).
Prints the job's result as JSON; exit 0 when it returned.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from runner_examples.common import DEFAULT_TEXTS
from runner_examples.mp_jobs import add_documents_job


def main() -> int:
    """Run one job in a one-worker pool with the chosen start method."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), required=True)
    p.add_argument("--executor", choices=("pool", "futures"), default="pool")
    args = p.parse_args()
    context = multiprocessing.get_context(args.start_method)
    if args.executor == "pool":
        with context.Pool(1) as pool:
            result = pool.apply(add_documents_job, (DEFAULT_TEXTS,))
    else:
        with ProcessPoolExecutor(1, mp_context=context) as executor:
            result = executor.submit(add_documents_job, DEFAULT_TEXTS).result()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
