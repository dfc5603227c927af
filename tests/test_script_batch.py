"""Script calls batched into one round trip keep their own answers and errors, and a Redis that lost its
scripts (restarted empty) or went away behaves as for a lone call."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.embedded import EmbeddedRedis, free_port
from service.script_batch import ScriptBatch

from .blackhole import blackhole

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused ' .. ARGV[1])"


async def test_concurrent_calls_share_a_batch_and_keep_their_own_answers(redis_server: EmbeddedRedis) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.delete("sb:n")
        batch = ScriptBatch(redis)
        incr, fail = batch.register(INCR), batch.register(FAIL)
        calls = [batch.call(incr, ["sb:n"], [1]) for _ in range(40)]
        bad = batch.call(fail, [], ["x"])
        after = batch.call(incr, ["sb:n"], [100])
        answers = await asyncio.gather(*calls, bad, after, return_exceptions=True)
        assert answers[:40] == list(range(1, 41))  # in the order called
        assert isinstance(answers[40], ResponseError) and "refused x" in str(answers[40])
        assert answers[41] == 140  # the failed script cost its neighbours nothing
        await redis.script_flush()  # as after a restart: EVAL loads them again
        assert await batch.call(incr, ["sb:n"], [1]) == 141
        assert await asyncio.gather(batch.call(incr, ["sb:n"], [1]), batch.call(incr, ["sb:n"], [1])) == [142, 143]
    finally:
        await redis.aclose()


async def test_redis_down_fails_every_call_of_the_batch() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        batch = ScriptBatch(redis)
        incr = batch.register(INCR)
        answers = await asyncio.gather(*[batch.call(incr, ["k"], [1]) for _ in range(3)], return_exceptions=True)
        assert all(isinstance(a, RedisConnectionError | OSError) for a in answers), answers
    finally:
        await redis.aclose()


@pytest.mark.parametrize("n", [1, 3])
async def test_a_cancelled_caller_leaves_the_others_answered(redis_server: EmbeddedRedis, n: int) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.delete("sb:c")
        batch = ScriptBatch(redis)
        incr = batch.register(INCR)
        futures = [batch.call(incr, ["sb:c"], [1]) for _ in range(n + 1)]
        futures[0].cancel()
        assert await asyncio.gather(*futures[1:]) == list(range(2, n + 2))  # the cancelled one still ran
    finally:
        await redis.aclose()


async def test_a_silent_path_fails_the_batch_with_redis_timeout_and_the_connection_recovers(
    redis_server: EmbeddedRedis,
) -> None:
    """The answers of a batch are read under one bound, the socket timeout: a path that drops packets fails every
    call of the batch with redis-py's TimeoutError (what the silence detection looks for), in about that long, and
    the connection that timed out is not handed out again mid-reply."""
    host, port = redis_server.url.split("//")[1].split("/")[0].split(":")
    async with blackhole(host, int(port)) as hole:
        redis = Redis(host="127.0.0.1", port=hole.port, socket_timeout=0.5)
        try:
            batch = ScriptBatch(redis)
            incr = batch.register(INCR)
            await redis.delete("sb:t")
            assert await batch.call(incr, ["sb:t"], [1]) == 1
            hole.cut()
            began = asyncio.get_running_loop().time()
            answers = await asyncio.gather(*[batch.call(incr, ["sb:t"], [1]) for _ in range(3)], return_exceptions=True)
            waited = asyncio.get_running_loop().time() - began
            assert all(isinstance(a, RedisTimeoutError) for a in answers), answers
            assert 0.4 < waited < 3, waited
            hole.heal()
            assert await batch.call(incr, ["sb:t"], [10]) in (11, 14), "a fresh connection, in step"
        finally:
            await redis.aclose()


async def test_a_script_not_yet_loaded_runs_in_its_place_in_the_batch(redis_server: EmbeddedRedis) -> None:
    """A batch loads the scripts it has not run yet before calling them (same round trip): a call of a script
    Redis does not know is not run again after the rest of its batch, behind later calls of a loaded script."""
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.delete("sb:order")
        await redis.script_flush()
        first = "return redis.call('RPUSH', KEYS[1], 'first ' .. ARGV[1])"
        second = "return redis.call('RPUSH', KEYS[1], 'second ' .. ARGV[1])"
        await redis.register_script(second)(keys=["sb:warm"], args=["0"])  # Redis knows this one only
        batch = ScriptBatch(redis)
        a, b = batch.register(first), batch.register(second)
        await asyncio.gather(batch.call(a, ["sb:order"], [1]), batch.call(b, ["sb:order"], [2]))
        assert await redis.lrange("sb:order", 0, -1) == [b"first 1", b"second 2"], "in the order called"
    finally:
        await redis.aclose()


async def test_a_pooled_connection_the_server_closed_or_left_unread_is_replaced_before_a_batch(
    redis_server: EmbeddedRedis,
) -> None:
    """The batch's own check-out (no turn of the loop when nothing is wrong) still finds what redis-py's would:
    a connection Redis closed while it sat in the pool, or one with an answer nobody read, is not sent on."""
    redis = Redis.from_url(redis_server.url)
    admin = Redis.from_url(redis_server.url)
    try:
        await redis.delete("sb:p")
        batch = ScriptBatch(redis)
        incr = batch.register(INCR)
        assert await batch.call(incr, ["sb:p"], [1]) == 1
        pool = redis.connection_pool
        (conn,) = pool._available_connections
        client_id = await redis.client_id()  # on that same connection, the pool's only one
        assert pool._available_connections == [conn]
        assert await admin.client_kill_filter(_id=client_id) == 1
        deadline = asyncio.get_running_loop().time() + 5
        while not conn._reader.at_eof():  # the loop saw Redis close it
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert await batch.call(incr, ["sb:p"], [1]) == 2  # reconnected, not failed
        (conn,) = pool._available_connections
        await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n")  # an answer left unread
        deadline = asyncio.get_running_loop().time() + 5
        while not conn._reader._buffer:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert await batch.call(incr, ["sb:p"], [1]) == 3  # not "PONG": that connection was not used as is
    finally:
        await admin.aclose()
        await redis.aclose()
