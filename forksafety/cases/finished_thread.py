"""Control case: a thread that did its work at import and has finished (joined).

Importing this module starts a thread on purpose; it is gone before the fork.
"""

import threading

results: list[int] = []


def _warm_up() -> None:
    results.append(sum(range(1000)))


_thread = threading.Thread(target=_warm_up, name="warm-up")
_thread.start()
_thread.join(timeout=10)


def use() -> int:
    """Return what the finished thread computed."""
    return results[0]
