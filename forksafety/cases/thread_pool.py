"""Case: a ``concurrent.futures.ThreadPoolExecutor`` used at import.

The executor's worker thread is idle when the process forks. In the child the
executor still counts that worker as idle (its ``_idle_semaphore``), so
``submit`` starts no new thread, and ``result()`` waits for a worker that does
not exist.

WARNING: importing this module starts a worker thread (on purpose).
"""

from concurrent.futures import ThreadPoolExecutor

executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="case-pool")
WARM = executor.submit(sum, [1, 2, 3]).result(timeout=10)


def use() -> int:
    """Compute 2**10 on the pool; return it."""
    return executor.submit(pow, 2, 10).result()
