#!/usr/bin/env python3
"""How much time ``python -m forksafety check TARGET`` adds to TARGET's own import.

    .venv/bin/python benchmarks/check_overhead.py                 # default targets, 5 runs each
    .venv/bin/python benchmarks/check_overhead.py --runs 9 pkg.tasks

For each target: the median wall time of ``python -c "import TARGET"`` (the
target's own import in a fresh interpreter, left with os._exit as the check's
runner does), the median wall time of ``python -m forksafety check TARGET``
(fresh CLI process, runner interpreter, tracking, inspection, report), and the
difference: the overhead. Both run with compiled modules cached, as on a
user's machine (under a private PYTHONPYCACHEPREFIX, so the repository stays
clean). Runs alternate between the two commands so that machine load affects
both alike. The budget is 0.5 s: exit 0 when every overhead is within it, else 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET = 0.5  # seconds
DEFAULT_TARGETS = ["forksafety.cases.plain", "forksafety.cases.grpc_channel", "celery_examples.tasks_pool_test"]


def timed(cmd: list[str], env: dict[str, str], timeout: float = 120.0) -> float:
    """Wall time (seconds) of ``cmd``; raises if it fails in an unexpected way."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # check exits 1 for RISK/UNSAFE: that is a result, not a failure
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", default=DEFAULT_TARGETS, help="modules to time")
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    args = parser.parse_args()
    # removed at the end, also when a command fails or the run is interrupted
    with tempfile.TemporaryDirectory(prefix="forksafety-bench-") as scratch:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CHROMA_DIR": scratch, "FORKSAFETY_CASE_DIR": scratch,
               # as on a user's machine: compiled modules cached (here under a private prefix, not in the repo)
               "PYTHONPYCACHEPREFIX": os.path.join(scratch, "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs per command, "
              f"budget {BUDGET:g} s")
        print(f"{'target':<36} {'import alone':>12} {'check':>8} {'overhead':>9}")
        worst = 0.0
        for target in args.targets:
            base, check = [], []
            timed([sys.executable, "-c", f"import {target}"], env)  # warm the page cache and .pyc files
            for _ in range(args.runs):
                # os._exit: the target's own import, without the interpreter's teardown (the check skips it too)
                base.append(timed([sys.executable, "-c", f"import {target}, os; os._exit(0)"], env))
                check.append(timed([sys.executable, "-m", "forksafety", "check", target], env))
            b, c = statistics.median(base), statistics.median(check)
            worst = max(worst, c - b)
            print(f"{target:<36} {b:>10.3f} s {c:>6.3f} s {c - b:>+7.3f} s")
        verdict = "within" if worst <= BUDGET else "OVER"
        print(f"overhead figure: check adds at most {worst:.3f} s to a target's own import "
              f"({verdict} the {BUDGET:g} s budget)")
    return 0 if worst <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
