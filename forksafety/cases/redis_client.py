"""Control case: a redis-py client used before the fork.

redis-py's ConnectionPool records the pid that made it and, in a forked child,
drops the inherited connections and opens new ones (``_checkpid``), so the
child works. The server is a private ``redis-server`` on a free loopback port
(forksafety.broker.start_private_redis), killed when this process dies.

WARNING: importing this module starts redis-server and connects to it (on purpose).
"""

import os

import redis

from forksafety.broker import start_private_redis
from forksafety.watch import RUN_ID_ENV

server = start_private_redis(os.environ.get(RUN_ID_ENV) or "case-redis")
client = redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
client.set("forksafety:case", "parent")


def use() -> str:
    """Write and read a key from the child; return the value."""
    client.set("forksafety:case", "child")
    return client.get("forksafety:case").decode()
