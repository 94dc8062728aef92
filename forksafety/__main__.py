"""``python -m forksafety check|lab``: see forksafety/cli_check.py."""

import sys

from .bootstrap import run

if __name__ == "__main__":
    sys.exit(run("forksafety.cli_check", "main", "python -m forksafety"))
