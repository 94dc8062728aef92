"""The loopback gRPC server of the grpc_channel case: an echo method served
with grpc's generic handlers (no generated code), on a free 127.0.0.1 port.

Run as ``python -m forksafety.cases.grpc_server``: prints the port on one line,
then serves until killed. It dies with its parent (PR_SET_PDEATHSIG).
"""

import sys
from concurrent import futures

import grpc

from forksafety.watch import set_parent_death_signal

SERVICE, METHOD = "forksafety.Echo", "Echo"


def _echo(request: bytes, _context) -> bytes:
    return request


def main() -> None:
    """Serve the echo method; print the port first."""
    set_parent_death_signal()
    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_echo)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
