#!/usr/bin/env python3
"""Benchmark: the runner matrix (`scripts/run_runners.py --all`), several runs. Prints the
whole matrix's wall time (target: under 40 s on 2 cores), each scenario's time, and the
HANG verdict latency: from the work reaching the stuck worker (the example's own
``started`` record, written just before it touches the store) to the verdict (target:
under 0.5 s). Prints figures; asserts nothing.

    python benchmarks/runners.py             # 3 runs
    python benchmarks/runners.py --runs 1 --runner gunicorn
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


def one_run(selection: list[str], parallel: int, folder: Path) -> tuple[float, dict]:
    """Run the matrix once; (wall seconds, its JSON record). Raises RuntimeError when it failed."""
    record = folder / "runners.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "scripts/run_runners.py"), *selection, "--parallel",
                           str(parallel), "--json", str(record), "--log-dir", str(folder / "dumps")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1) or not record.exists():
        raise RuntimeError(f"run_runners.py exited {done.returncode}: {done.stderr[-1500:]}")
    return wall, json.loads(record.read_text())


def main() -> int:
    """Run and print the figures; exit 0 (1 when a run failed)."""
    parser = Parser(prog="runners.py", description="Runner matrix wall time and HANG verdict latency.")
    parser.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    parser.add_argument("--runner", action="append", metavar="NAME", help="only this runner (repeatable)")
    parser.add_argument("--parallel", type=positive_int, default=2, help="scenarios at once (default 2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args()
    selection = [a for r in args.runner for a in ("--runner", r)] if args.runner else ["--all"]
    walls: list[float] = []
    seconds: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {}
    outcomes: set[tuple] = set()
    with tempfile.TemporaryDirectory(prefix="forksafety-bench-") as tmp:
        for i in range(args.runs):
            try:
                wall, record = one_run(selection, args.parallel, Path(tmp) / f"run{i}")
            except RuntimeError as exc:
                print(f"run {i + 1}: {exc}")
                return 1
            walls.append(wall)
            outcomes.add(tuple((r["runner"], r["variant"], r["outcome"]) for r in record["results"]))
            for r in record["results"]:
                name = f"{r['runner']}/{r['variant']}"
                seconds.setdefault(name, []).append(r["seconds"])
                if r["outcome"] == "HANG" and r["verdict_seconds"] is not None:
                    latency.setdefault(name, []).append(r["verdict_seconds"])
            print(f"run {i + 1}/{args.runs}: {wall:5.1f} s wall, "
                  f"{sum(r['matched'] for r in record['results'])}/{len(record['results'])} matched")
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; parallel {args.parallel}")
    print(f"{'scenario':<36} {'mean s':>7} {'max s':>7} {'HANG verdict ms (mean/max)':>28}")
    for name, secs in seconds.items():
        lat = latency.get(name)
        shown = f"{statistics.mean(lat) * 1000:.0f} / {max(lat) * 1000:.0f}" if lat else "-"
        print(f"{name:<36} {statistics.mean(secs):7.2f} {max(secs):7.2f} {shown:>28}")
    print(f"whole matrix wall time: mean {statistics.mean(walls):.1f} s, min {min(walls):.1f} s, "
          f"max {max(walls):.1f} s (target < 40 s on 2 cores)")
    every = [x for values in latency.values() for x in values]
    if every:
        print(f"HANG verdict latency, work reached the stuck worker -> verdict: mean {statistics.mean(every) * 1000:.0f} ms, "
              f"max {max(every) * 1000:.0f} ms over {len(every)} verdicts (target < 500 ms)")
    print(f"outcomes identical in all {args.runs} runs: {'yes' if len(outcomes) == 1 else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "parallel": args.parallel, "walls": walls,
                                         "seconds": seconds, "hang_verdict_seconds": latency,
                                         "identical": len(outcomes) == 1}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
