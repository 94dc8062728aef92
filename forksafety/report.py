"""Results as a rich table, a JSON record and a Markdown table.

The JSON record is the one source of truth: ``{"platform", "python", "versions",
"broker", "results": [Verdict.to_dict(), ...]}`` plus run facts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.table import Table

from .outcome import Verdict
from .versions import package_versions, platform_record


def results_record(verdicts: list[Verdict], broker: str, **extra: object) -> dict:
    """The JSON-ready record of a run."""
    plat = platform_record()
    return {
        "platform": plat["platform"],
        "machine": plat["machine"],
        "system": plat["system"],
        "python": plat["python"],
        "versions": package_versions(),
        "broker": broker,
        **extra,
        "all_matched": all(v.matched for v in verdicts),
        "results": [v.to_dict() for v in verdicts],
    }


def write_json(path: Path, record: dict) -> Path:
    """Write ``record`` to ``path`` atomically (temp file + rename); creates parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def _outcome_text(v: Verdict) -> str:
    text = v.outcome.value
    if v.signal:
        text += f" {v.signal}"
    if v.rule:
        text += f" ({v.rule})"
    return text


def results_table(verdicts: list[Verdict], title: str = "Celery pool matrix") -> Table:
    """A rich Table: scenario, outcome, expected, match, seconds, detail."""
    table = Table(title=title)
    for name, kw in (("pool", {"no_wrap": True}), ("variant", {"no_wrap": True}),
                     ("outcome", {"no_wrap": True}), ("expected", {"no_wrap": True}),
                     ("match", {"justify": "center", "min_width": 5, "no_wrap": True}),
                     ("seconds", {"justify": "right", "min_width": 7, "no_wrap": True}),
                     ("detail", {"overflow": "ellipsis", "no_wrap": True, "max_width": 48})):
        table.add_column(name, **kw)
    for v in verdicts:
        colour = "green" if v.matched else "red"
        table.add_row(v.pool, v.variant, f"[{colour}]{_outcome_text(v)}[/]", str(v.expected),
                      "yes" if v.matched else "[red]NO[/]", f"{v.seconds:.1f}", v.detail.splitlines()[0] if v.detail else "")
    return table


def markdown_table(results: list[dict]) -> str:
    """The results table in Markdown (for docs/), from the JSON record's ``results``."""
    rows = ["| pool | variant | outcome | expected | match | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        outcome = r["outcome"] + (f" {r['signal']}" if r.get("signal") else "") + (f" ({r['rule']})" if r.get("rule") else "")
        rows.append(f"| {r['pool']} | {r['variant']} | {outcome} | {r['expected']} | "
                    f"{'yes' if r['matched'] else 'NO'} | {r['seconds']:.1f} |")
    return "\n".join(rows)
