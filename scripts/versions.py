#!/usr/bin/env python3
"""Which versions hang: build one environment per version set and run the fork demo and
the Celery prefork scenario in each (see forksafety/versionsets.py).

    python scripts/versions.py                      # every set (make versions)
    python scripts/versions.py --set report-py3.12 --json crash_dumps/versions.json

Exit codes: 0 every set that ran matched its expected outcomes (a missing interpreter
is skipped, not a failure), 1 one did not or its build failed, 2 usage, 130 interrupted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_versions", "main", Path(__file__).name))
