#!/usr/bin/env python3
"""Regenerate the captured blocks of README.md and docs/*.md from real runs (`make docs`).

    python scripts/make_docs.py            # run the captures, rewrite the blocks
    python scripts/make_docs.py --check    # verify no block was edited by hand
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_docs", "main", Path(__file__).name))
