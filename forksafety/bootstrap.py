"""Start a CLI of this repository with a clear error when its dependencies are
missing (the system Python instead of .venv). Imports only the standard library."""

from __future__ import annotations

import importlib
import sys


def run(module: str, function: str = "main", prog: str = "", argv: list[str] | None = None) -> int:
    """Import ``module`` and return ``module.function(argv)`` (``module.function()`` without ``argv``).

    A third-party package missing at import or at run time becomes one line on
    stderr naming it and the fix, with exit code 2; Ctrl-C while importing
    exits 130. A missing module of our own package is a bug and is re-raised.
    """
    try:
        target = getattr(importlib.import_module(module), function)
        return target() if argv is None else target(argv)
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == "forksafety":
            raise
        sys.stderr.write(f"{prog or module}: error: the Python package {exc.name!r} is not installed in "
                         f"{sys.executable}: `pip install {exc.name.split('.')[0]}` there (in this repository's "
                         f"checkout: run `make install` and use .venv/bin/python)\n")
        return 2
    except KeyboardInterrupt:  # only reached before the CLI installed its own handlers
        return 130
