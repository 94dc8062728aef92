"""A real Chroma server for the ``chroma-server`` fix variant, started and stopped by the harness.

``chroma run --host 127.0.0.1 --port <free> --path <folder>`` (the ``chroma`` console
script of the installed chromadb; chromadb 1.x: a Rust server in
``chromadb_rust_bindings``). The task module then creates ``chromadb.HttpClient`` at
module level: the worker's process holds an HTTP client (httpx), not the embedded
Rust runtime, so a forked pool child inherits no runtime threads to wait on.

The server runs in its own session with PR_SET_PDEATHSIG and carries the run's
FORKSAFETY_RUN_ID / FORKSAFETY_SCENARIO tags, so it is stopped on every path: by
``stop()``, by the runner's sweep, or by the kernel when the runner dies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from .broker import free_port
from .errors import UsageError
from .watch import pdeathsig_preexec, stop_group, wait_until

HOST_ENV = "FORKSAFETY_CHROMA_HOST"
PORT_ENV = "FORKSAFETY_CHROMA_PORT"
HEARTBEATS = ("/api/v2/heartbeat", "/api/v1/heartbeat")  # chromadb 1.x, 0.x


def chroma_command() -> list[str]:
    """The ``chroma`` console script next to this interpreter (raises UsageError when missing)."""
    script = Path(sys.executable).with_name("chroma")
    found = str(script) if script.exists() else shutil.which("chroma")
    if not found:
        raise UsageError("the chroma command (chromadb's server) is not installed next to "
                         f"{sys.executable}", "install chromadb in this environment (make install)")
    return [found]


def _answers(port: int) -> bool:
    for path in HEARTBEATS:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.5) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            continue
    return False


class ChromaServer:
    """One ``chroma run`` process on a free 127.0.0.1 port.

    data_dir: the server's persistence folder. log_path: its stdout and stderr.
    env: the environment to start it with (the caller's run tags included).
    """

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = env
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._stopped = False

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait (at most ``timeout`` seconds) until its heartbeat
        answers. Raises UsageError when it exits or does not answer (it is then stopped)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = chroma_command() + ["run", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--path", str(self.data_dir)]
        with open(self.log_path, "w") as log:
            log.write(f"# {' '.join(command)}\n")
            log.flush()
            self.process = subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=pdeathsig_preexec())
        up = wait_until(lambda: self.process.poll() is not None or _answers(self.port), timeout, interval=0.1)
        if not up or self.process.poll() is not None:
            code = self.process.poll()
            self.stop()
            raise UsageError(f"chroma run on 127.0.0.1:{self.port} " +
                             (f"exited with code {code}" if code is not None else f"did not answer in {timeout:g} s"),
                             f"see {self.log_path}")

    def client_env(self) -> dict[str, str]:
        """What the task module needs to reach the server."""
        return {HOST_ENV: "127.0.0.1", PORT_ENV: str(self.port)}

    def stop(self) -> None:
        """Stop the server and its process group (watch.stop_group: SIGTERM, 2 s, then
        SIGKILL) and reap it. Idempotent."""
        if self.process is not None and not self._stopped:
            self._stopped = True
            stop_group(self.process, grace=2.0)

def client_settings() -> tuple[str, int]:
    """In the task module: the (host, port) the harness put in the environment.
    Raises RuntimeError when the module runs without the harness's server."""
    host, port = os.environ.get(HOST_ENV), os.environ.get(PORT_ENV)
    if not host or not port:
        raise RuntimeError(f"{HOST_ENV}/{PORT_ENV} are not set: run this variant through "
                           "run_test.py --variant chroma-server, which starts the Chroma server")
    return host, int(port)
