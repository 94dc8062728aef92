#!/usr/bin/env python3
"""Run the fork demo and record the child with lldb.

    python scripts/lldb_attach_child.py            # Linux: attach to the stuck child
                                                   # macOS: catch the child's SIGTRAP / EXC_BREAKPOINT
    python scripts/lldb_attach_child.py --json crash_dumps/lldb.json

Linux: waits until the child is stuck, records thread list, bt all, the frame,
its disassembly and registers, detaches and stops the child. macOS: attaches
before the child runs, lets it go, and records bt all, the frame, its
disassembly and registers at the crash. Log: crash_dumps/lldb_<variant>_<time>.log.
Exit codes: 0 recorded, 1 nothing to record, 2 usage/set-up error (lldb missing:
apt-get install lldb), 130 interrupted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    from forksafety.bootstrap import run

    sys.exit(run("forksafety.cli_attach", "lldb_main", Path(__file__).name))
