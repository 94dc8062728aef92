"""``python -m forksafety check|lab``: see forksafety/cli_check.py."""

import sys

from .cli_check import main

if __name__ == "__main__":
    sys.exit(main())
