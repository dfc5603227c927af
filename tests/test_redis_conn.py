"""service/redis_conn.py against the installed redis-py: what it relies on is there, and a send still works,
times out as redis-py's `TimeoutError`, and keeps a cancel."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.embedded import EmbeddedRedis
from service.redis_conn import BoundedSend, bounded
from service.redis_url import redis_client

from .blackhole import blackhole


def test_the_redis_py_it_wraps_has_what_it_relies_on() -> None:
    params = list(inspect.signature(Connection.send_packed_command).parameters)
    assert params == ["self", "command", "check_health"]
    assert "nowait" in inspect.signature(Connection.disconnect).parameters
    assert "socket_timeout" in inspect.signature(AbstractConnection.__init__).parameters
    # what it replaces: redis-py's write under a socket timeout goes through wait_for
    assert "wait_for" in inspect.getsource(Connection.send_packed_command)
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        assert issubclass(bounded(cls), BoundedSend) and issubclass(bounded(cls), cls)


async def test_every_client_gets_bounded_connections(redis_server: EmbeddedRedis) -> None:
    client = redis_client(redis_server.url, socket_timeout=2)
    try:
        assert issubclass(client.connection_pool.connection_class, BoundedSend)
        assert await client.ping()
        assert await client.set("aijobs:test:redis-conn", "1", ex=5)
    finally:
        await client.aclose()


async def test_a_silent_path_times_out_and_a_cancel_is_kept(redis_server: EmbeddedRedis) -> None:
    async with blackhole("127.0.0.1", redis_server.port) as proxy:
        client = redis_client(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            assert await client.ping()  # connected through the proxy
            proxy.cut()
            with pytest.raises(RedisTimeoutError):
                await client.ping()
            task = asyncio.create_task(client.ping())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            proxy.heal()
            assert await client.ping()  # a fresh connection once the path is back
        finally:
            proxy.heal()
            await client.aclose()
