"""Control case: stdlib logging configured and used before the fork.

logging re-initialises its module lock and every handler's lock in a forked
child (os.register_at_fork in Lib/logging/__init__.py), so the child logs fine.

WARNING: importing this module opens a log file (on purpose).
"""

import logging

from forksafety.cases import scratch_dir

LOG_FILE = scratch_dir() / "case.log"
logger = logging.getLogger("forksafety.case")
logger.setLevel(logging.INFO)
logger.addHandler(logging.FileHandler(LOG_FILE))
logger.propagate = False
logger.info("configured in the parent")


def use() -> int:
    """Log a line from the child; return the number of lines in the file."""
    logger.info("logged from the child")
    for handler in logger.handlers:
        handler.flush()
    return len(LOG_FILE.read_text().splitlines())
