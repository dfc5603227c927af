"""Group commit for Lua script calls: the calls a process makes while one batch is on its way go together in
the next pipeline (one round trip, one pooled connection, one socket write), each keeping its own answer.

Under concurrent submissions redis-py's per-call cost (take a pooled connection and check it, pack, write,
read) was most of a POST's Redis time, paid twice per request; a pipeline pays it once per batch. Each script
still runs whole and atomically in Redis (a pipeline that is no transaction only shares the round trip), in the
order called. A lone call goes at once, so an idle process pays one loop iteration, not a timer.

A connection error fails every call of its batch with that error (the callers' Redis-down paths apply as
before); a script error (or NOSCRIPT, after EVAL loaded the script again) fails only its own call.

With `skip_when_silent` (best-effort callers: events, the governor), a call made while Redis's path is silent fails at
once with `RedisSilent` instead of waiting out the socket timeout (service/redis_silence.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, cast

from hiredis import Reader, pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .metrics import redis_errors_of
from .redis_silence import RedisSilent, Silence, silence_of

_Call = tuple[AsyncScript, int, tuple[Any, ...], asyncio.Future[Any]]


class ScriptBatch:
    """Run registered scripts through one shared queue; `call` resolves to the script's answer."""

    def __init__(self, redis: Redis, *, skip_when_silent: bool = False) -> None:
        self.redis = redis
        self.silence: Silence | None = silence_of(redis) if skip_when_silent else None
        self._pending: list[_Call] = []
        self._loaded: set[str] = set()  # scripts (sha) this batch loaded, or ran, on the server
        self._sender: asyncio.Task[None] | None = None

    def register(self, source: str) -> AsyncScript:
        return self.redis.register_script(source)

    def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one call; the future resolves to what `await script(keys=keys, args=args)` would return."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.silence is not None:
            try:
                self.silence.check()
            except RedisSilent as exc:
                future.set_exception(exc)
                return future
        self._pending.append((script, len(keys), (*keys, *args), future))
        sender = self._sender
        if sender is None or sender.done() or sender.get_loop() is not future.get_loop():
            # serves every caller: not in this caller's context (its request's log fields, its span)
            self._sender = asyncio.create_task(self._send(), context=contextvars.Context())
        return future

    async def drain(self) -> None:
        """Wait until every call queued so far has been sent and answered (before the connection pool closes)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                if self.silence is not None:
                    self.silence.check()  # calls queued behind a batch that just timed out fail now, not in turn
                answers = await self._run(batch)
            except Exception as exc:
                if self.silence is not None:
                    self.silence.saw(exc)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _run(self, batch: list[_Call]) -> list[Any]:
        pool = self.redis.connection_pool
        conn = await checkout(pool)
        try:
            # A script this batch has not seen loaded is loaded first, in the same round trip: a call that failed
            # NOSCRIPT is run again after the whole batch, so a job's later call (of another script, loaded) would
            # have run before its earlier one.
            fresh = {script.sha: script for script, *_ in batch if script.sha not in self._loaded}
            loads = [pack_command(cast(Any, ("SCRIPT", "LOAD", script.script))) for script in fresh.values()]
            # hiredis packs each command in C; redis-py's pure-Python packer cost more than the round trip.
            calls = [pack_command(("EVALSHA", script.sha, nkeys, *args)) for script, nkeys, args, _ in batch]
            await conn.send_packed_command(b"".join(loads + calls), check_health=False)
            answers = (await _read_answers(conn, len(loads) + len(batch)))[len(loads) :]
            self._loaded.update(fresh)
        except BaseException as exc:
            errors = redis_errors_of(self.redis)
            if errors is not None:
                errors.note(exc)  # this path talks to the connection itself, past the pool's error count
            await conn.disconnect()  # replies may be left unread: never hand this connection out again as is
            raise
        finally:
            await pool.release(conn)
        for i, answer in enumerate(answers):
            if isinstance(answer, NoScriptError):  # Redis restarted empty: EVAL loads it again
                script, nkeys, args, _ = batch[i]
                self._loaded.discard(script.sha)
                try:
                    answers[i] = await script(keys=list(args[:nkeys]), args=list(args[nkeys:]))
                except Exception as exc:
                    answers[i] = exc
        return answers


async def checkout(pool: ConnectionPool) -> AbstractConnection:
    """A connection from the pool, as `pool.get_connection()` hands it out, without the turn of the loop its check
    costs when nothing is wrong: redis-py looks for unread data or a server-closed socket by reading under a 0 s
    timeout, which always yields once and raises and catches a cancel (a lone call's latency, e.g. an enqueue's,
    paid that turn before its bytes went). What that read would find, the loop has already put in the connection's
    buffers: nothing there, and it goes as is; anything else (or a pool or parser other than the ones this reads)
    and the pool's own check decides, reconnecting as it would."""
    if type(pool).get_connection is not ConnectionPool.get_connection:  # a blocking pool waits for one its own way
        return await pool.get_connection()
    conn = pool.get_available_connection()
    try:
        if not _idle_and_clean(conn):
            await pool.ensure_connection(conn)
    except BaseException:
        await pool.release(conn)
        raise
    return conn


def _idle_and_clean(conn: AbstractConnection) -> bool:
    """Connected, nothing unread in hiredis's buffer or the stream's, and no end of file or error seen."""
    parser = getattr(conn, "_parser", None)
    reader, stream = getattr(parser, "_reader", None), getattr(parser, "_stream", None)
    if not conn.is_connected or not isinstance(reader, Reader) or not isinstance(stream, asyncio.StreamReader):
        return False
    return (
        not reader.has_data()
        and not getattr(stream, "_buffer", True)
        and not stream.at_eof()
        and stream.exception() is None
    )


async def _read_answers(conn: Any, count: int) -> list[Any]:
    """`count` answers, a script's own error as its answer (the connection is still in step after one).

    Read from the connection's parser under one bound (the socket timeout) for the whole batch: redis-py's
    `read_response` enters an `asyncio.timeout` (a timer scheduled and cancelled) per answer, which cost more than
    reading the answer. A connection without the parser this expects, or whose class reads answers its own way (a
    Sentinel-managed one turns a demoted primary's READONLY into a lost connection: redis_url.FailoverConnection),
    is read the redis-py way."""
    parser = getattr(conn, "_parser", None)
    own_read = getattr(type(conn), "read_response", None) is not AbstractConnection.read_response
    if parser is None or not hasattr(parser, "read_response") or own_read:
        answers: list[Any] = []
        for _ in range(count):
            try:
                answers.append(await conn.read_response())
            except ResponseError as exc:
                answers.append(exc)
        return answers
    timeout = getattr(conn, "socket_timeout", None)
    try:
        async with asyncio.timeout(timeout):
            answers = [await parser.read_response() for _ in range(count)]
    except TimeoutError:  # before OSError: TimeoutError is one. The caller disconnects, as redis-py would.
        raise RedisTimeoutError("Timeout reading from Redis") from None
    except OSError as exc:
        raise RedisConnectionError(f"Error while reading from Redis: {exc.args}") from None
    interval = getattr(conn, "health_check_interval", 0)
    if interval:  # as redis-py's read_response: a connection just heard from needs no health check
        conn.next_health_check = asyncio.get_running_loop().time() + interval
    return answers


class BatchedScript:
    """A script called as redis-py's AsyncScript is (`await script(keys=..., args=...)`), sent through a ScriptBatch:
    packed by hiredis on a pooled connection without a per-call health check, sharing a round trip with the calls
    made meanwhile. redis-py's own per-call path (pool checkout and check, Python packing) cost more CPU than the
    script itself: the worker's take and finish, the coalescer's steps."""

    def __init__(self, batch: ScriptBatch, source: str) -> None:
        self.batch = batch
        self.script = batch.register(source)

    def __call__(self, *, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        return self.batch.call(self.script, keys, args)
