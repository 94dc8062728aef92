"""Send one job the way an app does: import the task module, call the task.

WARNING: importing a bug module (huey_tasks, dramatiq_actors) starts ChromaDB's
threads in this short-lived producer too, as in a web app that enqueues.

    python -m runner_examples.enqueue huey|dramatiq MODULE
"""

from __future__ import annotations

import argparse
import importlib

from runner_examples.common import DEFAULT_TEXTS


def main() -> int:
    """Enqueue ``add_documents`` with the default texts; exit 0 once it is sent."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("queue_library", choices=("huey", "dramatiq"))
    p.add_argument("module")
    args = p.parse_args()
    module = importlib.import_module(args.module)
    if args.queue_library == "huey":
        module.add_documents_task(DEFAULT_TEXTS)
    else:
        module.add_documents_actor.send(DEFAULT_TEXTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
