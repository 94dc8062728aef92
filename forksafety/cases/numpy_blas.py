"""Control case: a numpy matrix product before the fork.

numpy's bundled OpenBLAS starts a thread pool at import (one thread per extra
core). OpenBLAS registers a pthread_atfork handler that shuts the pool down
before fork() (driver/others/memory.c, openblas_fork_handler), so the child
computes fine: check must recognise those threads and not flag them.

WARNING: importing this module starts OpenBLAS's threads (on purpose).
"""

import numpy as np

matrix = np.arange(90000, dtype=np.float64).reshape(300, 300) / 90000.0
PRODUCT = float((matrix @ matrix).sum())


def use() -> float:
    """Compute the product again in the child; return its sum."""
    return float((matrix @ matrix).sum())
