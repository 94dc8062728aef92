#!/usr/bin/env python3
"""Prove that a hash-pinned requirements lock is a closed set.

A lock installed with ``pip install --no-deps --require-hashes`` gets exactly the locked
versions and nothing else: no resolver looks past them, so an upstream release cannot break
the install overnight. The price is that the lock itself must hold every dependency, extras
included. ``pip check`` verifies the plain requirements of what is installed, but not the
ones that come from an extra a dependent asked for (chromadb asks for ``uvicorn[standard]``,
which needs httptools, uvloop, watchfiles, websockets...): pip's ``operations/check.py`` reads
each requirement's name and version only. This script checks those too.

Usage:
  check_lock.py [--lock requirements.lock] [--python python3]
      fresh mode: make a venv with the stock ``PYTHON -m venv`` (its bundled pip, never
      upgraded), install the lock with --no-deps --require-hashes, run pip check, check the
      extras closure, import the packages the harness uses (pyproject's direct dependencies).
  check_lock.py --installed [--lock requirements.lock]
      check the environment of the interpreter running this script (``make install`` uses it
      on .venv after its own pip check): extras closure and imports.

Exit status: 0 the lock is closed; 1 it is not (each problem on a line of its own); 2 bad
usage or set-up (one line on stderr).

This is build tooling for the harness's exact environment, not part of the forksafety tool.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# "name==version" or "name[extra]==version" at the start of a line, as pip-compile and
# `uv export --format requirements-txt` write them.
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
VENV_SECONDS = 120
INSTALL_SECONDS = 1200
CHECK_SECONDS = 300


class LockError(Exception):
    """A set-up problem: the message is the one line the user sees (exit 2)."""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output, or "(no output)"."""
    return (text.strip().splitlines() or ["(no output)"])[-1]


def read_lock(path: Path) -> dict[str, tuple[str, str | None]]:
    """Map canonical name -> (version, environment marker or None) of every locked package.

    Raises LockError when the file cannot be read or pins nothing.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LockError(f"cannot read the lock {path}: {exc.strerror}; pass an existing file with --lock")
    pins: dict[str, tuple[str, str | None]] = {}
    for line in text.splitlines():
        match = LOCK_LINE.match(line)
        if match:
            name, version, marker = match.groups()
            pins.setdefault(canonical(name), (version, marker))
    if not pins:
        raise LockError(f"{path} pins no package (expected lines like 'name==1.2.3 \\'); regenerate it with make lock")
    return pins


def _packaging():
    """packaging's Requirement and Version, from the environment or pip's vendored copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip always carries a copy: pip/_vendor/packaging
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.version import Version  # type: ignore[no-redef]
    return Requirement, Version


def closure_problems(pins: dict[str, tuple[str, str | None]]) -> list[str]:
    """What the lock misses for the environment running this code, extras included.

    Walks every locked package that is installed here, with no extra, then every extra some
    requirement asks for (``uvicorn[standard]``), and reports each requirement whose package
    is not in the lock, not installed, or installed at a version outside the specifier.
    Metadata comes from ``importlib.metadata`` (the installed METADATA files).
    """
    from importlib import metadata

    Requirement, Version = _packaging()
    installed = {canonical(d.metadata["Name"]): d for d in metadata.distributions() if d.metadata["Name"]}
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo = [(name, "", "") for name in pins if name in installed]
    while todo:
        name, extra, wanted_by = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for text in installed[name].requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            dep = canonical(req.name)
            who = f"{name}[{extra}]" if extra else name
            chain = f"{who} (wanted by {wanted_by})" if wanted_by else who
            if dep not in pins:
                problems.append(f"{dep} is not in the lock: {chain} requires {req.name}{req.specifier}")
                continue
            if dep not in installed:
                problems.append(f"{dep} is in the lock but not installed in this environment (does its "
                                f"marker exclude this platform?): {chain} requires {req.name}{req.specifier}")
                continue
            have = installed[dep].version
            if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                problems.append(f"{dep} {have} is locked, but {chain} requires {req.name}{req.specifier}")
            for wanted_extra in req.extras:
                todo.append((dep, canonical(wanted_extra), who))
    return sorted(set(problems))


# modules of a direct dependency that import only inside their own server process:
# uwsgi's uwsgidecorators imports ``uwsgi``, which only a running uWSGI provides
SERVER_ONLY_MODULES = {"uwsgidecorators"}


def direct_imports() -> list[str]:
    """Top-level module names of the project's direct dependencies installed here.

    The direct dependencies are pyproject.toml's [project] dependencies, its optional
    dependencies and its dependency groups; module names come from
    ``importlib.metadata.packages_distributions()``. Distributions with no module (py-spy
    ships only a binary) are skipped, and so are SERVER_ONLY_MODULES.
    """
    import tomllib
    from importlib import metadata

    Requirement, _ = _packaging()
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    texts = list(project.get("project", {}).get("dependencies", []))
    for group in project.get("project", {}).get("optional-dependencies", {}).values():
        texts.extend(group)
    for group in project.get("dependency-groups", {}).values():
        texts.extend(t for t in group if isinstance(t, str))
    wanted = set()
    for text in texts:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            wanted.add(canonical(req.name))
    modules = set()
    for module, dists in metadata.packages_distributions().items():
        if module in SERVER_ONLY_MODULES:
            continue
        if module.isidentifier() and not module.startswith("_") and wanted & {canonical(d) for d in dists}:
            modules.add(module)
    return sorted(modules)


def check_installed(lock: Path) -> list[str]:
    """Closure problems plus import failures for this interpreter's environment."""
    problems = closure_problems(read_lock(lock))
    probe = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except Exception as exc:\n"
             "        print(f'import {name} failed: {type(exc).__name__}: {exc}')\n")
    done = subprocess.run([sys.executable, "-c", probe, *direct_imports()], capture_output=True, text=True,
                          timeout=CHECK_SECONDS)
    problems.extend(line for line in done.stdout.splitlines() if line.startswith("import "))
    if done.returncode != 0:
        problems.append(f"importing the direct dependencies failed: {last_line(done.stderr)}")
    return problems


def _run(cmd: list[str], seconds: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        raise LockError(f"{what} took longer than {seconds:.0f} s; check the network to the package index")


def check_fresh(lock: Path, python: str) -> list[str]:
    """Install the lock into a fresh venv as ``make install`` does, then check it there.

    Raises LockError when the venv cannot be made or a step exceeds its time bound.
    """
    with tempfile.TemporaryDirectory(prefix="forksafety-lockcheck-") as tmp:
        venv = Path(tmp) / "venv"
        made = _run([python, "-m", "venv", str(venv)], VENV_SECONDS, f"{python} -m venv")
        if made.returncode != 0:
            raise LockError(f"{python} -m venv failed: {last_line(made.stderr)}; "
                            "install the venv module (apt-get install python3-venv)")
        vpy = str(venv / "bin" / "python")
        started = time.monotonic()
        done = _run([vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                     "--require-hashes", "-r", str(lock)], INSTALL_SECONDS, "pip install of the lock")
        if done.returncode != 0:
            errors = [l for l in done.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
            return ["pip install --no-deps --require-hashes failed: " + " | ".join(errors[-3:])]
        print(f"installed {lock.name} with --no-deps in {time.monotonic() - started:.0f} s", file=sys.stderr)
        done = _run([vpy, "-m", "pip", "check", "--disable-pip-version-check"], CHECK_SECONDS, "pip check")
        if done.returncode != 0:
            return ["pip check: " + line for line in done.stdout.splitlines() if line.strip()]
        done = _run([vpy, str(Path(__file__).resolve()), "--installed", "--lock", str(lock)],
                    CHECK_SECONDS * 3, "the closure check")
        problems = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 2:
            raise LockError(done.stderr.strip())
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=REPO / "requirements.lock", help="the lock (default %(default)s)")
    parser.add_argument("--python", default="python3", help="interpreter for the fresh venv (default python3)")
    parser.add_argument("--installed", action="store_true", help="check this interpreter's environment instead")
    args = parser.parse_args(argv)
    try:
        if args.installed:
            problems = check_installed(args.lock)
        else:
            problems = check_fresh(args.lock, args.python)
    except LockError as exc:
        print(f"check_lock: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"check_lock: {exc.filename} not found; pass an interpreter on PATH with --python", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_lock: {args.lock} is not a closed set ({len(problems)} problem(s)); "
              "regenerate it with make lock", file=sys.stderr)
        return 1
    where = (f"this environment (Python {'.'.join(map(str, sys.version_info[:3]))})" if args.installed
             else f"a fresh venv of {args.python}")
    print(f"check_lock: {args.lock.name} is a closed set in {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
