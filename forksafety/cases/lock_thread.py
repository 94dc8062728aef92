"""Case: a background thread holding a lock the child needs.

A "flusher" thread takes the buffer lock and then waits for the next batch
*while holding it* (a common shape: the lock guards the buffer and the wait).
fork(2) copies the lock, held, into the child, but not the thread that would
release it: ``use()`` in the child blocks forever.

WARNING: importing this module starts that thread (on purpose).
"""

import queue
import threading

buffer_lock = threading.Lock()
buffer: list[str] = []
_batches: queue.Queue = queue.Queue()
_holding = threading.Event()


def _flusher() -> None:
    while True:
        with buffer_lock:
            _holding.set()
            batch = _batches.get()  # waits for work while holding the lock
            buffer.extend(batch)


flusher = threading.Thread(target=_flusher, name="buffer-flusher", daemon=True)
flusher.start()
_holding.wait(timeout=10)


def use() -> int:
    """Append to the buffer under its lock; return the buffer's length."""
    with buffer_lock:
        buffer.append("from the child")
        return len(buffer)
