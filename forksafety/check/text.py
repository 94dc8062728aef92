"""Text for people: the report as lines (CLIs print them; the library only builds them).

Part of the checker (``forksafety.check``).
"""

from __future__ import annotations

from collections import Counter

from .inspection import LEVELS, Report, ThreadRecord, plural


def _where(stack: list[str]) -> str:
    """``user frame`` or ``user frame (in innermost frame)`` from a format_stack list."""
    return stack[0] if len(stack) == 1 else f"{stack[0]} (in {stack[-1]})"


def short_summary(report: Report) -> str:
    """One line naming the threads that make the process unsafe (or the risks),
    e.g. ``9 threads a forked child would lose: 6 x tokio-rt-worker (Tokio ...), ...``."""
    bad = [t for t in report.threads if t.safety == "unsafe"]
    if bad:
        def label(t: ThreadRecord) -> tuple[str, str]:
            if t.python:  # Python threads all have the OS name "python" before 3.14: use theirs
                where = f", started at {_where(t.started_at)}" if t.started_at else ""
                return t.python_name or t.name, f"Python thread running {t.runs}{where}"
            return t.name, t.origin + (f", {t.used_by}" if t.used_by else "")

        groups = Counter(label(t) for t in bad)
        parts = [f"{n} x {name} ({origin})" for (name, origin), n in sorted(groups.items(), key=lambda kv: -kv[1])]
        return f"{plural(len(bad), 'thread')} a forked child would lose: {'; '.join(parts)}"
    risky = [f.title for f in report.findings if f.level == "RISK"]
    if risky:
        return "state that must not cross a fork: " + "; ".join(risky)
    return "nothing a fork would break"


def fixes(report: Report, extra: list[str] | None = None) -> list[str]:
    """The distinct one-line fixes of the UNSAFE and RISK findings, then ``extra``."""
    out: list[str] = []
    for f in report.findings:
        if f.level in ("UNSAFE", "RISK") and f.fix and f.fix not in out:
            out.append(f.fix)
    for line in extra or []:
        if line not in out:
            out.append(line)
    return out


def format_report(report: Report, target: str = "") -> list[str]:
    """The human-readable report: thread table, Python threads, SQLite, sockets,
    objects, verdict and findings with their fixes and sources."""
    lines: list[str] = []
    others = len(report.threads)
    where = "/proc/<pid>/task" if report.platform.startswith("linux") else "psutil"
    lines.append(f"Threads besides the one that would call fork() (OS view, {where}): {others}")
    if report.threads:
        groups = report.thread_groups()
        width = max(len(g["name"]) for g in groups)
        for g in groups:
            lib = f"  [{g['library']}]" if g["library"] and g["library"] not in g["origin"] else ""
            used = f" - {g['used_by']}" if g["used_by"] else ""
            level = LEVELS[g["safety"]]
            lines.append(f"  {g['count']:>3} x {g['name']:<{width}}  {level:<6}  {g['origin']}{used}{lib}")
        seen_lines: set[str] = set()
        for t in report.threads:
            if t.first_seen and not t.python:
                first = next((f for f in t.first_seen if f != "..."), t.first_seen[0])
                line = first if len(t.first_seen) == 1 else f"{first} ... {t.first_seen[-1]}"
                if (t.name, line) not in seen_lines:
                    seen_lines.add((t.name, line))
                    lines.append(f"        {t.name}: first seen while running {line}")
    py = [t for t in report.threads if t.python]
    lines.append(f"Python threads alive besides the caller: {len(py) or 'none'}")
    for t in py:
        lines.append(f"  {t.python_name!r} (tid {t.tid}{', daemon' if t.daemon else ''}) runs {t.runs}")
        if t.started_at:
            lines.append(f"      started at {_where(t.started_at)}")
    lines.append(f"SQLite databases open: {len(report.sqlite) or 'none'}")
    for s in report.sqlite:
        extra = f" (+ {', '.join(s.side_files)})" if s.side_files else ""
        lines.append(f"  {s.path}{extra}, fd {', '.join(map(str, s.fds))}")
    lines.append(f"Sockets open: {len(report.sockets) or 'none'}")
    for s in report.sockets:
        lines.append(f"  fd {s.fd} {s.family}/{s.type} {s.laddr or '-'} -> {s.raddr or '-'} {s.status}".rstrip()
                     + (f" (opened by {s.owner})" if s.owner else ""))
    if report.objects:
        lines.append("Objects with fork rules:")
        for o in report.objects:
            lines.append(f"  {o.count} x {o.type}: {o.origin} ({LEVELS[o.safety]})")
    lines.append("")
    lines.append(f"Verdict: {report.verdict.value}" + (f" ({target})" if target else ""))
    for f in report.findings:
        lines.append(f"  {f.level:<6} {f.title}")
        if f.note:
            lines.append(f"         note: {f.note}")
        if f.fix:
            lines.append(f"         fix: {f.fix}")
        if f.source:
            lines.append(f"         source: {f.source}")
    if not report.findings:
        lines.append("  nothing a fork would break was found")
    return lines


