"""forksafety: the shared package behind the fork-safety reproduction harness.

Importing this package (or any of its modules except the ones that say so at the
top) starts no thread and opens no connection: it is itself fork-safe.
"""

__version__ = "0.1.0"
