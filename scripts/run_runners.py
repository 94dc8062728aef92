#!/usr/bin/env python3
"""The fork-safety bug beyond Celery: Gunicorn, uWSGI, the report's FastAPI app, RQ,
Huey, Dramatiq and multiprocessing, each run for real with the bug and its fix.

    python scripts/run_runners.py --all
    python scripts/run_runners.py --runner gunicorn [--fixed] [--json crash_dumps/runners.json]
    python scripts/run_runners.py --list

Exit codes: 0 every outcome matched the expected one, 1 one did not, 2 usage or
set-up error (unknown runner, port taken, runner program missing), 130 interrupted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_runners", "main", Path(__file__).name))
