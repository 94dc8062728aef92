#!/usr/bin/env python3
"""Run a real Celery worker under each pool and report which ones deadlock.

    python celery_examples/run_test.py --all
    python celery_examples/run_test.py --pool prefork --pool threads --json crash_dumps/results.json

Exit codes: 0 every outcome matched the expected one, 1 one did not,
2 usage or set-up error (unknown pool, bad timeout, broker unreachable, ...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_run", "main", Path(__file__).name))
