#!/usr/bin/env python3
"""The fork demo without Celery: open a ChromaDB store, fork, and watch the child.

    python scripts/demo_crash.py                 # the bug: the child hangs (Linux) / SIGTRAP (macOS)
    python scripts/demo_crash.py --fixed         # the store is created only in the child: PASS
    python scripts/demo_crash.py --variant other-dir --json crash_dumps/demo.json
    python scripts/demo_crash.py --list          # the variants and their expected outcomes
    python scripts/demo_crash.py --strace        # the same under strace -f -tt

Exit codes: 0 the outcome is the expected one, 1 it is not, 2 usage or set-up
error, 130 interrupted. Logs go to crash_dumps/demo_<variant>_<time>.log.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_demo", "main", Path(__file__).name))
