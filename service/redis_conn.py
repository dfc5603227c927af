"""Redis connections whose socket timeout cannot swallow a cancel.

With a socket timeout set (REDIS_SOCKET_TIMEOUT), redis-py 5.3's asyncio `Connection.send_packed_command` writes
through `asyncio.wait_for`, and on Python 3.11 `wait_for` returns normally when the task is cancelled just as the
write completes: the cancel is lost. Every Redis command goes through it, so a worker or web process being stopped
(a test's teardown, a shutdown) could miss its cancel and run on (seen: an in-process worker whose task never ended).
Reads are bounded with `asyncio.timeout`, which keeps a cancel, so only the write is replaced.

`BoundedSend.send_packed_command` runs redis-py's own with the socket timeout taken off for the call (so no
`wait_for`) inside `asyncio.timeout(socket_timeout)`, and turns that timeout into redis-py's `TimeoutError`, as
redis-py does. It relies on `send_packed_command(command, check_health)`, `socket_timeout` and `disconnect(nowait=)`,
which tests/test_redis_conn.py checks against the installed redis-py (pinned in pyproject.toml); should anything of
it be missing, the call goes to redis-py's own path unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("aijobs.redis")


class BoundedSend:
    """Mixin for a redis-py asyncio connection class: see the module docstring."""

    socket_timeout: float | None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = getattr(self, "socket_timeout", None)
        parent: Any = super()
        if not timeout:
            return await parent.send_packed_command(command, check_health)
        self.socket_timeout = None  # redis-py then writes without wait_for; the bound is the asyncio.timeout below
        try:
            async with asyncio.timeout(timeout):
                await parent.send_packed_command(command, check_health)
        except TimeoutError:  # ours (redis-py's own disconnected the connection as it was cancelled)
            connection: Any = self  # the redis-py connection this mixin is part of
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout
        return None


_made: dict[type[Any], type[Any]] = {}


def bounded(connection_class: type[Any]) -> type[Any]:
    """`connection_class` with BoundedSend (made once per class)."""
    if issubclass(connection_class, BoundedSend):
        return connection_class
    made = _made.get(connection_class)
    if made is None:
        name = f"Bounded{connection_class.__name__}"
        made = _made[connection_class] = type(name, (BoundedSend, connection_class), {})
    return made


def bound_sends(client: Redis) -> Redis:
    """Make every connection `client`'s pool opens from now on a bounded one; returns `client`."""
    pool = client.connection_pool
    try:
        pool.connection_class = bounded(pool.connection_class)
    except Exception as exc:  # not the pool this was written for: redis-py's own connections, unchanged
        log.warning("Redis writes keep redis-py's own socket timeout path", extra={"error": repr(exc)})
    return client
