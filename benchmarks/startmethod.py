#!/usr/bin/env python3
"""Benchmark: what the prefork start methods cost. For fork (the `lazy` variant,
so the task passes), spawn and forkserver: worker start (process start -> Celery's
worker_ready) and first-task latency (task sent -> result), over several runs,
one scenario at a time. Prints figures; asserts nothing.

    python benchmarks/startmethod.py [--runs 3]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from forksafety.cli import Parser, positive_int  # noqa: E402

METHODS = {"fork (variant lazy)": "lazy", "spawn": "spawn", "forkserver": "forkserver"}


def main() -> int:
    parser = Parser(prog="startmethod.py", description="Measure worker start and first-task latency of the "
                    "prefork pool with the fork, spawn and forkserver start methods.")
    parser.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    parser.add_argument("--broker", choices=("auto", "redis", "filesystem"), default="auto",
                        help="passed to run_test.py (default auto)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    ready: dict[str, list[float]] = {m: [] for m in METHODS}
    task: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}.json"
            selection = [a for v in METHODS.values() for a in ("--variant", v)]
            done = subprocess.run([sys.executable, str(REPO / "celery_examples/run_test.py"), *selection,
                                   "--parallel", "1", "--broker", args.broker, "--json", str(out),
                                   "--log-dir", str(Path(tmp) / "dumps")],
                                  cwd=REPO, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(f"run {i + 1}: runner exit {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
                return 1
            by_variant = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
            for label, variant in METHODS.items():
                ready[label].append(by_variant[variant]["extra"]["worker_ready_seconds"])
                task[label].append(by_variant[variant]["extra"]["task_seconds"])
    print(f"{'start method':<22} {'worker start s (mean/max)':>28} {'first task s (mean/max)':>26}")
    for label in METHODS:
        print(f"{label:<22} {statistics.mean(ready[label]):17.2f} / {max(ready[label]):5.2f}"
              f" {statistics.mean(task[label]):15.2f} / {max(task[label]):5.2f}")
    print(f"({args.runs} runs each, one scenario at a time)")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "worker_ready_seconds": ready, "task_seconds": task}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
