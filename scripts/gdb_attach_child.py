#!/usr/bin/env python3
"""Run the fork demo, wait until the child is stuck, and record it with gdb.

    python scripts/gdb_attach_child.py                       # the bug (variant module-level)
    python scripts/gdb_attach_child.py --variant lazy-in-task --json crash_dumps/gdb.json
    python scripts/gdb_attach_child.py --python-stack pystack  # skip gdb's py-bt

Records info threads, thread apply all bt, the Python stack (py-bt, else pystack
or py-spy), the registers and the futex call decoded for this architecture into
crash_dumps/gdb_<variant>_<time>.log, then detaches and stops the child.
Needs ptrace: run as root, or kernel.yama.ptrace_scope <= 1, or SYS_PTRACE in Docker.
Exit codes: 0 recorded, 1 nothing stuck to record, 2 usage/set-up error, 130 interrupted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_attach", "gdb_main", Path(__file__).name))
