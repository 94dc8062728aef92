#!/usr/bin/env python3
"""Benchmark: run the full matrix (`run_test.py --all`) several times and print
wall time per scenario and in total, the verdict latency of the hang rules, and
whether the verdicts were identical every time. Prints figures; asserts nothing.

    python benchmarks/matrix.py              # 3 runs
    python benchmarks/matrix.py --runs 20    # the consistency check
    python benchmarks/matrix.py --pools-only # issue 2's five-pool matrix
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from forksafety.cli import Parser, positive_int  # noqa: E402

POOLS = ["prefork", "threads", "solo", "gevent", "eventlet"]


def main() -> int:
    parser = Parser(prog="matrix.py", description="Run the pool matrix several times and print wall time per "
                    "scenario and in total, hang-verdict latency, and whether the verdicts were identical.")
    parser.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    parser.add_argument("--pools-only", action="store_true", help="the five pools, no prefork variants")
    parser.add_argument("--broker", choices=("auto", "redis", "filesystem"), default="auto",
                        help="passed to run_test.py (default auto)")
    parser.add_argument("--parallel", type=positive_int, default=os.cpu_count() or 1,
                        help="scenarios at once (default: CPU count)")
    args = parser.parse_args()
    selection = [a for p in POOLS for a in ("--pool", p)] if args.pools_only else ["--all"]
    walls, per_scenario, latencies, verdict_sets = [], {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}.json"
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, str(REPO / "celery_examples/run_test.py"), *selection,
                                   "--broker", args.broker, "--parallel", str(args.parallel), "--json", str(out),
                                   "--log-dir", str(Path(tmp) / "dumps")],
                                  cwd=REPO, capture_output=True, text=True, timeout=600)
            wall = time.monotonic() - t0
            if done.returncode not in (0, 1) or not out.exists():
                print(f"run {i + 1}: runner failed with exit {done.returncode}\n{done.stderr[-2000:]}")
                return 1
            record = json.loads(out.read_text())
            walls.append(wall)
            verdicts = tuple((r["pool"], r["variant"], r["outcome"], r["rule"]) for r in record["results"])
            verdict_sets.append(verdicts)
            for r in record["results"]:
                per_scenario.setdefault(f"{r['pool']}/{r['variant']}", []).append(r["seconds"])
                if r["rule"] in ("deadlock-proven", "stalled") and r["verdict_seconds"] is not None:
                    latencies.append(r["verdict_seconds"])
            print(f"run {i + 1}/{args.runs}: {wall:5.1f} s wall, exit {done.returncode}, "
                  f"{sum(r['matched'] for r in record['results'])}/{len(record['results'])} matched")
    print(f"\nmachine: {os.cpu_count()} CPUs; broker {record['broker']}; parallel {args.parallel}")
    print(f"{'scenario':<30} {'mean s':>8} {'min s':>8} {'max s':>8}")
    for name, secs in per_scenario.items():
        print(f"{name:<30} {statistics.mean(secs):8.2f} {min(secs):8.2f} {max(secs):8.2f}")
    print(f"{'whole matrix (wall)':<30} {statistics.mean(walls):8.2f} {min(walls):8.2f} {max(walls):8.2f}")
    if latencies:
        print(f"hang verdict latency (task reached the child -> verdict): mean {statistics.mean(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} hang verdicts")
    identical = len(set(verdict_sets)) == 1
    print(f"verdicts identical in all {args.runs} runs: {'yes' if identical else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
