"""``make docs``: run the captures for real and regenerate the captured blocks.

Runs (each bounded): the fork demo, every demo variant, the gdb attach, the demo
under strace, the Celery pool matrix, the version matrix (scripts/versions.py), the runner matrix
and its benchmark; then rewrites every captured block
of README.md and docs/*.md from what they wrote. ``--check`` only verifies
that no block was edited by hand (exit 1 when one was).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import docs, docs_tool
from .cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, Parser
from .outcome import outcome_text
from .report import markdown_table
from .settings import REPO_ROOT

PROG = "make_docs.py"
PY = sys.executable


def _run(argv: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([PY, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "140"})
    log.write_text(done.stdout + done.stderr)
    return done


def capture(out: Path, progress=print) -> None:
    """Run every capture into ``out`` (logs, traces and JSON records). Raises
    RuntimeError when a capture did not produce its record."""
    from .demo import VARIANTS

    dumps = out / "dumps"
    jobs = [
        ("demo", ["scripts/demo_crash.py", "--json", str(out / "demo.json"), "--log-dir", str(dumps)], 120),
        ("gdb", ["scripts/gdb_attach_child.py", "--json", str(out / "gdb.json"), "--log-dir", str(dumps)], 180),
        ("strace", ["scripts/demo_crash.py", "--strace", "--json", str(out / "strace.json"), "--log-dir", str(dumps)], 180),
        ("matrix", ["celery_examples/run_test.py", "--all", "--json", str(out / "results.json"),
                    "--log-dir", str(dumps)], 600),
    ]
    jobs.append(("versions", ["scripts/versions.py", "--json", str(out / "versions.json")], 2400))
    jobs.append(("startmethod", ["benchmarks/startmethod.py", "--runs", "2", "--json", str(out / "startmethod.json")], 600))
    jobs.append(("runners", ["scripts/run_runners.py", "--all", "--json", str(out / "runners.json"),
                             "--log-dir", str(dumps)], 600))
    jobs.append(("bench-runners", ["benchmarks/runners.py", "--runs", "1", "--json", str(out / "bench-runners.json")], 600))
    jobs += [(f"variant-{name}", ["scripts/demo_crash.py", "--variant", name, "--timeout", "5", "--no-stacks",
                                  "--json", str(out / f"variant-{name}.json"), "--log-dir", str(dumps)], 120)
             for name in VARIANTS]
    for label, argv, timeout in jobs:
        t0 = time.monotonic()
        done = _run(argv, timeout, out / f"{label}.out")
        progress(f"  {label:<32} exit {done.returncode} in {time.monotonic() - t0:5.1f} s")
        record = argv[argv.index("--json") + 1]
        if not Path(record).exists():
            raise RuntimeError(f"{label} wrote no record (exit {done.returncode}); see {out / (label + '.out')}")
    docs_tool.capture(out, progress)  # README "Use it on your own app": wheel, check, inspect, pytest plugin


def _fence(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def _cut(text: str, width: int = 160) -> str:
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in text.splitlines())


def _tail_from(text: str, start: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(start):
            return "\n".join(lines[i:])
    return text


def provenance_line(plat: dict, versions: dict) -> str:
    """Where and with what the captures ran: system, machine, Python, celery, billiard, chromadb, date."""
    return (f"{plat['system']} {plat['machine']}, Python {plat['python']}, celery {versions['celery']}, "
            f"billiard {versions['billiard']}, chromadb {versions['chromadb']}, {time.strftime('%Y-%m-%d', time.gmtime())}")


def capture_excerpt(log: str, stack_lines: int = 16) -> str:
    """The parts of a capture file a reader needs: verdict, what this means, threads,
    the current syscall, and the first lines of the first successful py-spy dump."""
    spy = next(((h, body) for h, body in docs.sections(log).items()
                if h.startswith("py-spy") and "(exit 0)" in h), ("py-spy: (no successful dump)", ""))
    return ("== verdict ==\n" + docs.section(log, "verdict") + "\n\n" +
            "== what this means ==\n" + docs.section(log, "what this means") + "\n\n" +
            docs.section(log, "threads") + "\n\n" + docs.section(log, "current syscall") + "\n\n" +
            f"$ {spy[0].split(': ', 1)[1].rsplit(' (exit', 1)[0]}\n" + "\n".join(spy[1].splitlines()[:stack_lines]))


# runner -> (does it import your module before forking the process that runs the work?, the bug
# scenario, the fix scenarios): what README's runner table says next to the measured outcomes
RUNNER_ROWS = {
    "multiprocessing": ("yes with the fork context (the parent creates the store, then the pool forks)",
                        "pool-fork", "the spawn or forkserver context"),
    "gunicorn": ("with `--preload` only", "preload", "drop `--preload`, or open the store in a `post_fork` hook"),
    "fastapi": ("the Celery worker does (prefork pool)", "prefork",
                "open the store in `worker_process_init` (Celery's fixes)"),
    "rq": ("no with `rq worker` (the horse imports it after the fork); yes with a preloading worker script",
           "preload", "`SpawnWorker` or `SimpleWorker`, or no preloading"),
    "huey": ("yes (`huey_consumer -k process`)", "process", "open the store in `@huey.on_startup()`"),
    "dramatiq": ("no (each worker process imports the actors)", "default", "none needed"),
    "uwsgi": ("yes (the master loads the app)", "default", "`--lazy-apps`"),
}


def runner_bodies(out: Path) -> dict[str, str]:
    """Blocks of docs/RUNNERS.md and README's runner table, from the runner matrix's captures."""
    record = json.loads((out / "runners.json").read_text())
    rows = {(r["runner"], r["variant"]): r for r in record["results"]}
    b: dict[str, str] = {}
    text = (out / "runners.out").read_text()
    head = [line for line in text.splitlines() if "scenario(s)" in line]
    table = _tail_from(text, next((line for line in text.splitlines() if "Runner matrix" in line), ""))
    versions = ", ".join(f"{k} {v}" for k, v in record.get("runner_versions", {}).items())
    b["runners-output"] = _fence(_cut("\n".join([f"# versions: {versions}", *head, "...", table]), 150))
    b["runners-table"] = markdown_table(record["results"], keys=("runner", "variant", "kind"), detail=110) + "\n"
    b["runners-fastapi"] = _fence("\n".join(
        f"fastapi/{r['variant']}: {outcome_text(r['outcome'], r.get('signal'), r.get('rule'))}: {r['detail']}"
        for (runner, _v), r in rows.items() if runner == "fastapi"))
    hung = rows[("gunicorn", "preload")]
    b["runners-capture"] = _fence(_cut(capture_excerpt(Path(hung["evidence"]["log"]).read_text())))
    b["runners-bench"] = _fence((out / "bench-runners.out").read_text())
    lines = ["| runner | imports your module before forking? | outcome with a module-level store | fix |",
             "|---|---|---|---|"]
    for runner, (imports, bug, fix) in RUNNER_ROWS.items():
        r = rows[(runner, bug)]
        fixes = [f"{v}: {x['outcome']}" for (name, v), x in rows.items() if name == runner and x["kind"] != "bug"]
        measured = outcome_text(r["outcome"], r.get("signal"), r.get("rule")) + f" ({bug})"
        lines.append(f"| {runner} | {imports} | {measured} | {fix} ({'; '.join(fixes)}) |")
    b["runners-readme"] = "\n".join(lines) + "\n"
    return b


def bodies(out: Path) -> tuple[dict[str, str], str]:
    """Block bodies from the captures in ``out``, and the provenance line."""
    from .demo import VARIANTS

    demo = json.loads((out / "demo.json").read_text())
    gdb = json.loads((out / "gdb.json").read_text())
    strace = json.loads((out / "strace.json").read_text())
    matrix = json.loads((out / "results.json").read_text())
    demo_log = Path(demo["log"]).read_text()
    gdb_log = Path(gdb["log"]).read_text()
    prefork = next(r for r in matrix["results"] if (r["pool"], r["variant"]) == ("prefork", "module-level"))
    celery_log = Path(prefork["evidence"]["log"]).read_text()
    provenance = provenance_line(matrix, matrix["versions"])
    b: dict[str, str] = {}
    b["demo-output"] = _fence(_cut((out / "demo.out").read_text()))
    b["demo-threads"] = _fence(docs.section(demo_log, "threads") + "\n\n" + docs.section(demo_log, "current syscall"))
    b["gdb-backtrace"] = _fence(_cut(docs.section(gdb_log, "gdb: info threads") + "\n\n" +
                                     docs.section(gdb_log, "gdb: thread apply all bt")))
    b["gdb-py-bt"] = _fence(docs.section(gdb_log, "gdb: py-bt") or docs.section(gdb_log, "Python stack"))
    b["gdb-futex"] = _fence(docs.section(gdb_log, "gdb: x/wx") + "\n\n" + docs.section(gdb_log, "current syscall decoded"))
    b["gdb-registers"] = _fence("\n".join(line for line in docs.section(gdb_log, "gdb: registers").splitlines()
                                          if line.split()[:1] and line.split()[0] in
                                          ("rax", "rdi", "rsi", "rdx", "r10", "rip", "orig_rax")))
    strace_log = Path(strace["log"]).read_text()
    fds = docs.section(strace_log, "file descriptors").splitlines()
    b["strace-fds"] = _fence(f"# the same child {strace['child_pid']}: /proc/{strace['child_pid']}/fd while it hung "
                             f"(from {Path(strace['log']).name})\n" + "\n".join(fds[:9]))
    unfinished = strace["strace"]["unfinished_futex"]
    b["strace-child"] = _fence(_cut("\n".join(
        ["$ strace -f -tt -A -o crash_dumps/strace_<variant>_<time>.trace python scripts/demo_crash.py ...",
         f"# child {unfinished['pid']}: what it did just before it blocked, then its unfinished futex call "
         f"(trace line {unfinished['line_number']}; {unfinished['ended']}):",
         *unfinished["before"], unfinished["line"]])))
    b["celery-capture"] = _fence(_cut(capture_excerpt(celery_log)))
    forked = prefork["evidence"].get("child_forked_before_task_seconds")
    b["celery-fork-timing"] = (f"In the run above, the pool child that received the task had been forked "
                               f"**{forked} s before the task was sent** (its start time, from psutil, against "
                               f"the time the runner sent the task): the prefork pool forks its children when "
                               f"the pool starts, not when a task arrives.\n")
    b["celery-matrix"] = markdown_table(matrix["results"]) + "\n"
    runner = (out / "matrix.out").read_text()
    head = [line for line in runner.splitlines() if line.startswith(("broker:", "10 scenario", f"{len(matrix['results'])} scenario"))]
    table = _tail_from(runner, next((line for line in runner.splitlines() if "Celery pool matrix" in line), ""))
    b["runner-output"] = _fence(_cut("\n".join(head) + "\n...\n" + table, 150))
    rows = ["| demo variant | what parent and child do | outcome here | rule | seconds | expected |",
            "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        rec = json.loads((out / f"variant-{name}.json").read_text())
        outcome = rec["outcome"] + (f" {rec['signal']}" if rec.get("signal") else "")
        rows.append(f"| `{name}` | {rec['summary']} | {outcome} | {rec.get('rule') or ''} | "
                    f"{rec['seconds']:.2f} | {rec['expected']} |")
    b["demo-variants"] = "\n".join(rows) + "\n"
    b["startmethod-bench"] = _fence((out / "startmethod.out").read_text())
    versions = json.loads((out / "versions.json").read_text())
    b["versions-matrix"] = _fence(f"$ make versions   # {versions['platform']['system']} {versions['platform']['machine']}, "
                                  f"{versions['wall_seconds']:.0f} s wall\n" + versions["table"])
    eventlet_log = (out / "dumps" / "worker_eventlet.log").read_text()
    lines = eventlet_log.splitlines()
    start = next((i for i, line in enumerate(lines) if "EventletDeprecationWarning" in line), None)
    warning = []
    if start is not None:
        for line in lines[start:start + 8]:
            if warning and (line.startswith("[") or not line.strip()):
                break
            warning.append(line)
    b.update(docs_tool.bodies(out))
    b.update(runner_bodies(out))
    b["eventlet-warning"] = _fence("\n".join(_cut(line, 150) for line in warning) or "(no warning logged)")
    # show the paths a user gets (crash_dumps/), not the capture folder make docs used
    for name, body in b.items():
        b[name] = body.replace(str(out / "dumps"), "crash_dumps").replace(str(out), "crash_dumps")
    return b, provenance


def main(argv: list[str] | None = None) -> int:
    """Regenerate (default) or verify (--check) the captured blocks. Exit 0 ok,
    1 a block was edited by hand or a capture failed, 2 usage."""
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only verify the blocks; exit 1 when one was edited")
    p.add_argument("--from", dest="source", type=Path, metavar="DIR",
                   help="reuse the captures of an earlier run (its --keep folder) instead of running them")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the captures in DIR")
    p.add_argument("--only", choices=("tool",),
                   help="tool: only the captures of README's 'Use it on your own app' (the installed tool); "
                        "the other blocks are left as they are")
    args = p.parse_args(argv)
    files = docs.docs_files(REPO_ROOT)
    if args.check:
        problems = [f"{f.relative_to(REPO_ROOT)}: {msg}" for f in files if f.exists()
                    for msg in docs.verify_text(f.read_text())]
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) in {len(files)} file(s)")
        return EXIT_MISMATCH if problems else EXIT_OK
    done_file = "tool/inspect.out" if args.only else "results.json"
    if args.source and not (args.source / done_file).exists():
        sys.stderr.write(f"{PROG}: error: {args.source} holds no captures ({done_file} missing): "
                         "pass the folder an earlier `make docs --keep DIR` wrote\n")
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="forksafety-docs-") as tmp:
        out = args.source or args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if not args.source:
            print(f"capturing into {out} " + ("(the installed tool)" if args.only else
                                              "(demo, gdb, strace, pool matrix, demo variants, runner matrix, the installed tool)"))
            try:
                if args.only:
                    docs_tool.capture(out)
                else:
                    capture(out)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                sys.stderr.write(f"{PROG}: error: {exc}\n")
                return EXIT_MISMATCH
        if args.only:
            from .versions import package_versions, platform_record

            blocks, provenance = docs_tool.bodies(out), provenance_line(platform_record(), package_versions())
        else:
            blocks, provenance = bodies(out)
        used: set[str] = set()
        for f in files:
            if not f.exists():
                continue
            text = f.read_text()
            new, missing = docs.fill(text, blocks, provenance)
            if missing and not args.only:
                sys.stderr.write(f"{PROG}: error: {f.name} has blocks nobody generates: {', '.join(missing)}\n")
                return EXIT_MISMATCH
            used.update(docs.block_names(text))
            if new != text:
                f.write_text(new)
                print(f"updated {f.relative_to(REPO_ROOT)}")
        print(f"blocks available: {len(blocks)}, used: {len(used & set(blocks))}; provenance: {provenance}")
    return EXIT_OK
