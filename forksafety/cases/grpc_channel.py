"""Case: a gRPC channel used before the fork, against a loopback server.

The server runs in a separate process (forksafety/cases/grpc_server.py), so the
only gRPC threads here are the client's (event_engine, grpc_global_tim,
lifeguard). The child calls the inherited channel without a deadline, as users
often do. grpc's switch GRPC_ENABLE_FORK_SUPPORT changes what happens (see the
lab's cases and https://github.com/grpc/grpc/blob/master/doc/fork_support.md).

WARNING: importing this module starts a server process and gRPC's threads (on purpose).
"""

import select
import subprocess
import sys

import grpc

from forksafety.cases.grpc_server import METHOD, SERVICE
from forksafety.watch import pdeathsig_preexec

server = subprocess.Popen([sys.executable, "-m", "forksafety.cases.grpc_server"], stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, preexec_fn=pdeathsig_preexec())
if not select.select([server.stdout], [], [], 30)[0]:
    server.kill()
    raise RuntimeError("the loopback gRPC server did not start within 30 s")
PORT = int(server.stdout.readline())
channel = grpc.insecure_channel(f"127.0.0.1:{PORT}")
echo = channel.unary_unary(f"/{SERVICE}/{METHOD}")
WARM = echo(b"from the parent", timeout=10)


def use() -> bytes:
    """Call the echo method over the inherited channel; return the reply."""
    return echo(b"from the child")
