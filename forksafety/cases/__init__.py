"""The case corpus: small modules, each creating one resource the way users do
at import time, plus a ``use()`` that a forked child calls.

``python -m forksafety lab`` imports each case in a fresh interpreter, runs the
check on it (the verdict), forks, calls ``use()`` in the child and records what
happened (the outcome): the checker proven against reality.

Importing this package (the catalogue below) starts nothing. Importing a case
module does, on purpose: each says what at its top.

Expected outcomes are what this repository *measured* with the pinned versions
on Linux x86_64 (2 cores, Python 3.11.7, grpcio 1.85.3, chromadb 1.5.9,
tokenizers 0.23.3, numpy 2.4.6, redis 8.1.0), with
``python -m forksafety lab --all --repeat 10`` (the counts are in each case's
note; controls: PASS 10/10). A case whose outcome was not the same on every run
lists every outcome seen, and the tests assert only its verdict.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CASE_DIR_ENV = "FORKSAFETY_CASE_DIR"


def scratch_dir() -> Path:
    """A folder for the case's files: ``$FORKSAFETY_CASE_DIR`` (the lab makes one per
    run and removes it), else a new temporary folder."""
    folder = os.environ.get(CASE_DIR_ENV)
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="forksafety-case-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Case:
    """One case of the corpus.

    module: the case module (imported in a fresh interpreter). probe: the callable
    the forked child calls. expected: the outcome(s) measured (PASS, HANG, CRASH,
    ERROR); more than one means it was not the same on every run.
    verdict: what ``check`` must say (SAFE for every control).
    env: environment switches of the library under test (None: make sure it is unset).
    """

    name: str
    module: str
    summary: str
    expected: tuple[str, ...]
    verdict: str
    control: bool = False
    env: dict[str, str | None] = field(default_factory=dict)
    note: str = ""
    probe: str = "use"

    @property
    def deterministic(self) -> bool:
        """True when every measured run had the same outcome."""
        return len(self.expected) == 1

    def expected_text(self) -> str:
        """``HANG``, or ``PASS|ERROR`` for a case that is not deterministic."""
        return "|".join(self.expected)


_P = "forksafety.cases."

CASES: tuple[Case, ...] = (
    Case("chroma-store", _P + "chroma_store",
         "ChromaDB store (langchain_chroma.Chroma, Rust core) created at import",
         ("HANG",), "UNSAFE",
         note="HANG 10/10 (deadlock-proven): the child waits on a private futex forever; Tokio and sqlx "
              "threads are gone"),
    Case("lock-held-by-thread", _P + "lock_thread",
         "background thread holding a lock the child needs",
         ("HANG",), "UNSAFE",
         note="HANG 10/10 (deadlock-proven): the lock stays held by a thread the child does not have"),
    Case("thread-pool", _P + "thread_pool",
         "concurrent.futures.ThreadPoolExecutor used at import",
         ("HANG",), "UNSAFE",
         note="HANG 10/10 (deadlock-proven): the child's executor counts the parent's idle worker, starts none"),
    Case("grpc-fork-support-off", _P + "grpc_channel",
         "gRPC channel used before the fork (loopback server), GRPC_ENABLE_FORK_SUPPORT=0",
         ("HANG",), "UNSAFE", env={"GRPC_ENABLE_FORK_SUPPORT": "0"},
         note="HANG 10/10 (deadline): the call polls epoll_wait (200 ms timeout) forever, no gRPC thread "
              "drives it"),
    Case("grpc-fork-support-on", _P + "grpc_channel",
         "gRPC channel used before the fork (loopback server), GRPC_ENABLE_FORK_SUPPORT=1",
         ("PASS", "ERROR"), "RISK", env={"GRPC_ENABLE_FORK_SUPPORT": "1"},
         note="PASS 18, ERROR 5 in 23 runs, not deterministic: gRPC restarts its threads in the child; the "
              "inherited channel works or fails with UNAVAILABLE (sendmsg: Wrong file descriptor generation)"),
    Case("grpc-default", _P + "grpc_channel",
         "gRPC channel used before the fork (loopback server), fork support switch unset",
         ("PASS", "ERROR"), "UNSAFE", env={"GRPC_ENABLE_FORK_SUPPORT": None},
         note="PASS 18, ERROR 5 in 23 runs, not deterministic: grpcio 1.85.3 leaves Python fork support off "
              "(cygrpc.is_fork_support_enabled() is False) yet does not hang here; the call works or fails "
              "with UNAVAILABLE"),
    Case("sqlite-connection", _P + "sqlite_conn",
         "stdlib sqlite3 connection opened (and written) before the fork",
         ("PASS",), "RISK",
         note="PASS 10/10: nothing hangs; the danger is locks and corruption (sqlite.org howtocorrupt 2.6)"),
    Case("plain-module", _P + "plain", "a plain module: constants and functions", ("PASS",), "SAFE", control=True),
    Case("finished-thread", _P + "finished_thread", "a thread that ran at import and has finished",
         ("PASS",), "SAFE", control=True),
    Case("stdlib-logging", _P + "logging_setup", "stdlib logging configured and used before the fork",
         ("PASS",), "SAFE", control=True,
         note="logging re-creates its locks in the child (os.register_at_fork)"),
    Case("redis-client", _P + "redis_client", "redis-py client used before the fork (private redis-server)",
         ("PASS",), "SAFE", control=True, note="redis-py's pool checks the pid and reconnects in the child"),
    Case("numpy-openblas", _P + "numpy_blas", "numpy matrix product before the fork (OpenBLAS thread pool)",
         ("PASS",), "SAFE", control=True, note="OpenBLAS shuts its pool down at fork (pthread_atfork)"),
    Case("tokenizers-default", _P + "tokenizers_batch",
         "Hugging Face tokenizers batch encoding before the fork, TOKENIZERS_PARALLELISM unset",
         ("PASS",), "SAFE", control=True, env={"TOKENIZERS_PARALLELISM": None},
         note="PASS 10/10: tokenizers turns its parallelism off in the child (pthread_atfork)"),
    Case("tokenizers-parallelism-true", _P + "tokenizers_batch",
         "Hugging Face tokenizers batch encoding before the fork, TOKENIZERS_PARALLELISM=true",
         ("HANG",), "UNSAFE", env={"TOKENIZERS_PARALLELISM": "true"},
         note="HANG 10/10 (deadlock-proven): set explicitly, parallelism stays on in the child, which waits "
              "for Rayon threads that are gone"),
    Case("tokenizers-parallelism-false", _P + "tokenizers_batch",
         "Hugging Face tokenizers batch encoding before the fork, TOKENIZERS_PARALLELISM=false",
         ("PASS",), "SAFE", control=True, env={"TOKENIZERS_PARALLELISM": "false"},
         note="no thread pool at all"),
)


def case_names() -> list[str]:
    """Names of every case, in catalogue order."""
    return [c.name for c in CASES]


def get_case(name: str) -> Case:
    """The case called ``name``. Raises KeyError."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)
