"""Redis clients from REDIS_URL, made in this one place: a plain URL (redis://, rediss://, unix://), or a Sentinel
set (`redis+sentinel://…`, parsed in config.py) whose primary every new connection asks the Sentinels for.

Every connection maker goes through `redis_client` (a plain redis-py client) or `arq_pool` (arq's ArqRedis, for the
web process's queue and the worker). With Sentinel they are redis-py's asyncio `Sentinel.master_for`, as arq's own
`RedisSettings(sentinel=True)` builds them, but made here: arq's path cannot give the Sentinels a password or
timeouts of their own.

What redis-py does in a failover, and what is added to it here:

- A new connection asks the Sentinels where the primary is, so anything that reconnects finds the new one. A
  connection whose socket dropped (the primary died, or Sentinel's `CLIENT KILL` when it demotes one) raises
  `ConnectionError` once; the callers' Redis-down paths take it, and their next call reconnects.
- A connection still open to a primary that was demoted (`READONLY` on a write) is closed and raises
  `ConnectionError` (redis-py does that for a plain command; `FailoverConnection` also for a write inside a Lua
  script, which Redis 6.2 reports as a script error, and for `UNBLOCKED`, what a blocked command gets when its
  server turns replica).
- An idle pooled connection, or a pub/sub subscription, stays on a primary that the Sentinels replaced but that is
  still up (a manual `SENTINEL FAILOVER`, a partition that heals): redis-py never looks again, and Sentinel
  reconfigures the old one only when it next sees it (up to 10 s), so writes there until then are lost.
  `follow_primary` asks the Sentinels every second and, when the primary moved, closes every connection of the
  pool, in use or idle: every caller, the pub/sub listeners included, reconnects to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, TypeVar, overload

from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import is_sentinel_url, parse_sentinel_url
from .redis_conn import bound_sends

log = logging.getLogger("aijobs.redis")

R = TypeVar("R", bound=Redis)

CONNECT_TIMEOUT = 1.0  # seconds to open a connection to Redis: arq's own default (`conn_timeout`)
SENTINEL_TIMEOUT = 2.0  # seconds for a Sentinel to answer; a dead one is skipped for the next
FOLLOW_SECONDS = 1.0  # how often `follow_primary` asks the Sentinels where the primary is

# TCP keepalive on every TCP connection to Redis: an idle connection (a pub/sub subscription) whose path went silent
# (packets dropped, no reset) is found dead after about 5 + 3 x 3 = 14 s, not after the kernel's two hours.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3, 3


def keepalive_options() -> dict[int, int]:
    """The TCP_KEEP* socket options this platform has (Linux has all three; macOS names the first differently)."""
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL, "TCP_KEEPCNT": KEEPALIVE_COUNT}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def connection_options(url: str, *, socket_timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    """What every connection to Redis of a process gets, in this one place (see README, *Partial partitions*).

    `socket_timeout` bounds each command's write and reply: a command on a path that went silent fails as a
    `TimeoutError` (a lost connection to every caller) instead of waiting for TCP to give up. Pub/sub reads pass
    their own timeout, which replaces it (redis-py), so a quiet subscription is not taken for a dead one; nothing
    here uses a blocking command (BLPOP, XREAD BLOCK) that would outwait it. None or 0: no limit."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout or None,
        "socket_connect_timeout": connect_timeout,
    }
    if not url.startswith("unix://"):  # redis-py's Unix socket connection takes no keepalive options
        options["socket_keepalive"] = True
        options["socket_keepalive_options"] = keepalive_options()
    return options


def _demoted(exc: ResponseError) -> bool:
    """An error that says this server is no longer the primary (see the module docstring)."""
    text = str(exc)
    return text.startswith("UNBLOCKED") or "READONLY You can't write" in text


class FailoverConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that also treats a demoted primary's script error and `UNBLOCKED` as a lost
    connection: closed (the next use asks the Sentinels again) and raised as `ConnectionError`."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not _demoted(exc):
                raise
            await self.disconnect()
            raise RedisConnectionError(f"this Redis is no longer the primary: {exc}") from exc


@overload
def redis_client(url: str, *, redis_class: type[R], **options: Any) -> R: ...


@overload
def redis_client(url: str, **options: Any) -> Redis: ...


def redis_client(url: str, *, redis_class: type[Redis] = Redis, **options: Any) -> Redis:
    """A client of `redis_class` on REDIS_URL; `options` go to every connection to Redis (not to the Sentinels)."""
    if not is_sentinel_url(url):
        return bound_sends(redis_class.from_url(url, **options))  # a socket timeout that keeps cancels: redis_conn.py
    target = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)
    client = sentinel.master_for(
        target.service,
        redis_class=redis_class,
        connection_class=FailoverConnection,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    return bound_sends(client)


async def arq_pool(
    url: str,
    *,
    job_serializer: Any,
    job_deserializer: Any,
    default_queue_name: str,
    retries: int = 5,
    retry_delay: float = 1.0,
    retry: Any = None,
    socket_timeout: float | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> ArqRedis:
    """arq's pool on REDIS_URL, once it answers a PING: retried `retries` times, as arq's `create_pool` does, so a
    process started while Redis (or the Sentinels' choice of a primary) is not ready waits a little for it."""
    for attempt in range(retries + 1):
        options = connection_options(url, socket_timeout=socket_timeout, connect_timeout=connect_timeout)
        if retry is not None:  # a redis-py Retry for every command (the metrics count Redis errors with one)
            options["retry"] = retry
        pool = redis_client(url, redis_class=ArqRedis, **options)
        pool.job_serializer = job_serializer
        pool.job_deserializer = job_deserializer
        pool.default_queue_name = default_queue_name
        try:
            await pool.ping()
        except (TimeoutError, RedisError, OSError) as exc:
            await pool.aclose()
            if attempt == retries:
                raise
            log.warning("Redis did not answer; trying again", extra={"error": repr(exc), "left": retries - attempt})
            await asyncio.sleep(retry_delay)
            continue
        return pool
    raise AssertionError("unreachable")


async def follow_primary(redis: Redis, *, every: float = FOLLOW_SECONDS) -> None:
    """Until cancelled: when the Sentinels name a new primary, close every connection of `redis`'s pool (see the
    module docstring). Returns at once for a client on a plain URL."""
    pool = redis.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return
    known: tuple[str, int] | None = None
    while True:
        try:
            host, port = await pool.sentinel_manager.discover_master(pool.service_name)
            address: tuple[str, int] | None = (str(host), int(port))
        except (RedisConnectionError, RedisTimeoutError, OSError):
            address = None  # no Sentinel answered, or none knows a primary (a failover under way): ask again
        if address is not None and address != known:
            if known is not None:
                log.warning(
                    "Redis primary moved; reconnecting everything to it",
                    extra={"was": f"{known[0]}:{known[1]}", "now": f"{address[0]}:{address[1]}"},
                )
                with contextlib.suppress(RedisError, OSError):
                    await pool.disconnect(inuse_connections=True)
            known = address
        await asyncio.sleep(every)
