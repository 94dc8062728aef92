"""``forksafety check|lab|inspect`` and ``python -m forksafety ...``: the tool's entry point.

``check`` and ``lab``: see forksafety/cli_check.py; ``inspect``: forksafety/cli_inspect.py.
The console script ``forksafety`` (pyproject ``[project.scripts]``) calls ``main``.
Imports only the standard library and ``bootstrap`` until a command is chosen.
"""

import os
import sys

from .bootstrap import run

COMMANDS = {"check": "forksafety.cli_check", "lab": "forksafety.cli_check", "inspect": "forksafety.cli_inspect"}
USAGE = """usage: {prog} [--version] COMMAND ...

Find, explain and fix fork-safety deadlocks in Python workers.

commands:
  check     import a module, file or Celery app and report what a fork would break
  lab       run the case corpus: observed outcome of a real fork vs the check's verdict
  inspect   diagnose a process that is stuck now (a Celery pool child, any pid)

options:
  --version  print the version and exit
  -h, --help show this help and exit

`{prog} COMMAND --help` shows the options of one command.
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command's CLI; returns the exit code (2: bad usage)."""
    args = sys.argv[1:] if argv is None else list(argv)
    prog = "forksafety" if os.path.basename(sys.argv[0]) == "forksafety" else "python -m forksafety"
    if args and args[0] in ("--version", "-V"):
        from . import __version__

        print(f"forksafety {__version__} (Python {sys.version.split()[0]}, {sys.executable})")
        return 0
    if args and args[0] in ("-h", "--help"):
        print(USAGE.format(prog=prog), end="")
        return 0
    if not args:
        sys.stderr.write(f"{prog}: error: choose a command: check, lab or inspect (see {prog} --help)\n")
        return 2
    if not args[0].startswith("-") and args[0] not in COMMANDS:  # check's parser knows only check and lab
        sys.stderr.write(f"{prog}: error: unknown command {args[0]!r}: use one of {', '.join(COMMANDS)} "
                         f"(see {prog} --help)\n")
        return 2
    if args and args[0] == "inspect":
        return run(COMMANDS["inspect"], "main", f"{prog} inspect", args[1:])
    # check, lab, and the one-line errors for no command or an unknown one
    return run(COMMANDS["check"], "main", prog, args)


if __name__ == "__main__":
    sys.exit(main())
