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

from .outcome import Record, outcome_text
from .versions import package_versions, platform_record


def results_record(verdicts: list[Record], broker: str, **extra: object) -> dict:
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a results file is as readable as any other
    os.replace(tmp, path)
    return path


def results_table(verdicts: list[Record], title: str = "Celery pool matrix", width: int = 140,
                  keys: tuple[str, ...] = ("pool", "variant", "start_method")) -> Table:
    """A rich Table: the ``keys`` columns (attributes of each record: pool, variant and
    the start method the pool child reported, for Celery; runner and variant for the
    runner matrix; a missing value shows as ``-``), outcome, expected, match, seconds
    and, when the console is at least 120 columns wide, the detail. Outcome columns
    never wrap or shrink."""
    table = Table(title=title)
    fixed = {"no_wrap": True}
    for key in keys:
        table.add_column(key.replace("_", " "), **fixed)
    table.add_column("outcome", **fixed)
    table.add_column("expected", **fixed)
    table.add_column("match", justify="center", **fixed)
    table.add_column("seconds", justify="right", **fixed)
    with_detail = width >= 120
    if with_detail:
        # the other columns and the borders take about 62 + 3 per key column
        keys_width = sum(max([len(k)] + [len(str(getattr(v, k) or "-")) for v in verdicts]) for k in keys)
        table.add_column("detail", overflow="ellipsis", no_wrap=True,
                         max_width=max(20, width - 62 - 3 * len(keys) - keys_width))
    for v in verdicts:
        colour = "green" if v.matched else "red"
        row = [*(str(getattr(v, k) or "-") for k in keys), f"[{colour}]{v.outcome_text()}[/]", str(v.expected),
               "yes" if v.matched else "[red]NO[/]", f"{v.seconds:.1f}"]
        if with_detail:
            row.append(v.detail.splitlines()[0] if v.detail else "")
        table.add_row(*row)
    return table


def markdown_table(results: list[dict], keys: tuple[str, ...] = ("pool", "variant", "start_method"),
                   detail: int = 0) -> str:
    """The results table in Markdown (for docs/), from the JSON record's ``results``:
    the ``keys`` columns (a missing value shows as ``-``), outcome, expected, match,
    seconds, and with ``detail`` > 0 the detail's first line cut to that many characters."""
    head = [*(k.replace("_", " ") for k in keys), "outcome", "expected", "match", "seconds"] + (["detail"] if detail else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        outcome = outcome_text(r["outcome"], r.get("signal"), r.get("rule"))
        cells = [str(r.get(k) or "-") for k in keys] + [outcome, r["expected"], "yes" if r["matched"] else "NO",
                                                       f"{r['seconds']:.1f}"]
        if detail:
            text = (r.get("detail") or "").splitlines()[0] if r.get("detail") else ""
            cells.append((text if len(text) <= detail else text[: detail - 1] + "…").replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
