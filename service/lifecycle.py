"""Keeping every job moving when parts fail: the sweeper, the reconciler, expiry and cleanup.

Every worker runs this loop; all its writes are conditional, so two workers sweeping at once do no harm (a lapsed
lease is taken over by one `take_over` on its old token, a missing job re-ticketed by one `touch_queued` on its
seq, and enqueueing a ticket already on the queue is a no-op: never a double enqueue). One sweep at a time is
still worth having: with many workers on many hosts, each pass reads every queued job and checks it in Redis. So a
pass first takes the turn (a Redis key set only if absent, lasting most of SWEEP_SECONDS): one worker of all of
them sweeps per interval, and the next interval whichever asks first. A Redis key, not a PostgreSQL advisory
lock: it works with both stores, and behind PgBouncer in transaction mode (a session lock would be held by a
server connection other clients share; a transaction-scoped one would hold a transaction open across the pass's
Redis calls). If Redis cannot answer, the pass runs anyway: the reconciler is what rebuilds a lost Redis, and
nothing it does relies on the turn being exclusive. A worker that cannot reach the store must not keep winning the
turn (each worker asks at the same phase of every interval, so the same one tends to ask first): it asks only
after the store answered a ping, and gives the turn back if its pass fails.
- Sweeper: a processing job whose lease lapsed (its worker died, froze or lost the store) is taken back:
  queued again with a new queue ticket, or `failed` with `worker_lost` once it has used all its attempts
  (a poison pill that kills every worker it touches), or `cancelled` if a cancel was asked for.
- Reconciler: a queued job that Redis does not hold (Redis restarted empty, or was down when the job was
  submitted) gets a new ticket and is enqueued again. The store is the truth; Redis is rebuilt from it.
- Re-announcer: a job that ended in the last two intervals but whose Stream lacks its end event (its worker died
  between the store's terminal write and the publish, which the worker queues without waiting; or Redis lost it)
  is announced from the store, so a watcher still connected hears the end instead of waiting until it reconnects.
  The publish is fenced by seq: an end event that arrives late anyway is refused, never told twice.
- Expiry: a job not started within its maximum wait becomes `expired`.
- Cleanup (an arq cron, once a minute across all workers): finished jobs past their retention are deleted,
  and finished jobs' event streams are dropped after EVENT_RETENTION (a late watcher gets a snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import time

from arq.constants import in_progress_key_prefix

from . import tracing
from .config import Settings
from .coordination import register_worker
from .events import EventLog, stream_key
from .metrics import Metrics
from .models import Job, JobError, JobStatus, now
from .queue import JobQueue, arq_job_id
from .runner import attempt_record
from .store import JobStore, job_secrets

log = logging.getLogger("aijobs.lifecycle")

RECONCILE_GRACE = 2.0  # seconds a queued job may sit between its store write and its enqueue
RECONCILE_CHUNK = 500  # queue entries checked per Redis round trip
REANNOUNCE_GRACE = 5.0  # seconds a finished job's end event may still be on its way (queued by its worker)
REANNOUNCE_LIMIT = 5000  # finished jobs checked per pass (more: the busiest minute of a big deployment; logged)


def about(job: Job) -> dict[str, object]:
    """The fields every log line about a job carries (a run's lines get them from its bound context), with the
    submitting request's ids as the store holds them."""
    return {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempts, **stored_origin(job).log_fields()}


def stored_origin(job: Job) -> tracing.Origin:
    """The submitting request's ids from the job's row: what a spell enqueued here carries to its worker, since the
    spell that had them in its queue entry is gone (its worker died, or Redis lost it). None in both for a job
    submitted before the store kept them (migration 12; PostgreSQL 4), or outside a request."""
    return tracing.Origin(job.request_id, job.traceparent)


_RELEASE_TURN = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Maintenance:
    def __init__(
        self,
        *,
        store: JobStore,
        queue: JobQueue,
        events: EventLog,
        settings: Settings,
        worker_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.queue = queue
        self.events = events
        self.settings = settings
        self.worker_id = worker_id

    async def sweep_leases(self) -> int:
        """Take back every job whose lease lapsed; returns how many."""
        taken = 0
        for job in await self.store.expired_leases():
            lost = JobError(
                message="The worker running this job stopped responding; it runs again on another worker.",
                code="worker_lost",
                retryable=True,
            )
            if job.cancel_requested:
                status, error, step = JobStatus.CANCELLED, None, "Cancelled"
            elif job.attempts >= job.max_attempts:
                status, step = JobStatus.FAILED, "Failed"
                error = JobError(
                    message=f"The worker running this job stopped responding on all {job.max_attempts} attempts; "
                    "the job itself is probably what stops it.",
                    code="worker_lost",
                    retryable=False,
                )
            else:
                status, error, step = JobStatus.QUEUED, lost, "Waiting for a worker (the last one stopped)…"
            on = job.running_on or {}  # written by the lost attempt's claim (None for a row from before migration 7)
            seconds = now() - (on.get("since") or job.started_at or now())  # this attempt's claim, when known
            record = attempt_record(job, on.get("model"), lost, seconds, on.get("provider"))
            done = await self.store.take_over(
                job.id, job.lease_token, status=status, error=error, step=step, record=record
            )
            if done is None:
                continue
            taken += 1
            self.metrics.job_taken_over(done.type, done.status.value)
            log.warning(
                "lapsed lease taken over",
                extra={**about(job), "worker": job.worker_id, "now": done.status.value},
            )
            await self.events.announce(done)
            if done.status is JobStatus.QUEUED:
                try:
                    origin = stored_origin(done).enqueue_kwargs()  # the next spell's lines and trace carry them
                    await self.queue.enqueue(done.id, ticket=done.seq, priority=done.priority, origin=origin)
                except Exception as exc:  # Redis is down: the reconciler enqueues it once Redis is back
                    log.warning("could not enqueue a taken-over job", extra={**about(done), "error": repr(exc)})
        return taken

    async def reconcile(self) -> int:
        """Enqueue every queued job Redis lacks (or holds only as a stale, never-claimed run)."""
        fixed = 0
        queued = await self.store.list_queued(older_than=now() - RECONCILE_GRACE)
        held: list[bool] = []
        for start in range(0, len(queued), RECONCILE_CHUNK):  # a backlog of thousands: one round trip per chunk
            held += await self.queue.holds_many([(j.id, j.seq) for j in queued[start : start + RECONCILE_CHUNK]])
        for job, holds in zip(queued, held, strict=True):
            if job.cancel_requested:  # flagged while running, then given back: it must not wait forever
                cancelled = await self.store.cancel_queued(job.id, job.user_id)
                if cancelled is not None:
                    self.metrics.job_finished(cancelled.type, JobStatus.CANCELLED.value)
                    await self.events.announce(cancelled)
                continue
            if holds:
                stale = job.updated_at < now() - self.settings.lease_seconds and await self.queue.redis.exists(
                    in_progress_key_prefix + arq_job_id(job.id, job.seq)
                )
                if not stale:
                    continue
            fresh = await self.store.touch_queued(job.id, job.seq, step="Back in the queue…")
            if fresh is None:
                continue
            await self.events.announce(fresh)
            delay = max(0.0, (fresh.ready_at or 0) - now())
            await self.queue.enqueue(
                fresh.id,
                ticket=fresh.seq,
                priority=fresh.priority,
                defer_seconds=delay,
                origin=stored_origin(fresh).enqueue_kwargs(),
            )
            fixed += 1
            log.warning("queued job was missing from Redis; enqueued again", extra=about(job))
        return fixed

    async def reannounce(self, *, at: float | None = None) -> int:
        """Announce, from the store, every recently finished job whose Stream lacks its end; returns how many.

        Checks the jobs that ended in the two sweep intervals before the last REANNOUNCE_GRACE seconds (`at`: now),
        so a pass that another worker skipped is covered by the next; each check is one XREVRANGE, pipelined."""
        until = (at if at is not None else now()) - REANNOUNCE_GRACE
        since = until - 2 * self.settings.sweep_seconds
        ended = await self.store.finished_seqs(since, until, limit=REANNOUNCE_LIMIT)
        if len(ended) == REANNOUNCE_LIMIT:
            log.warning("more jobs ended than one re-announce pass checks", extra={"checked": REANNOUNCE_LIMIT})
        fixed = 0
        for start in range(0, len(ended), RECONCILE_CHUNK):
            chunk = ended[start : start + RECONCILE_CHUNK]
            logged = await self.events.newest_seqs([job_id for job_id, _, _ in chunk])
            for (job_id, _, seq), newest in zip(chunk, logged, strict=True):
                if newest >= seq:
                    continue
                job = await self.store.get(job_id)
                if job is None or not job.terminal:
                    continue  # purged, or retried since
                await self.events.announce(job)
                fixed += 1
                log.warning("announced a finished job whose end event was missing", extra=about(job))
        return fixed

    async def expire(self) -> int:
        expired = await self.store.expire_overdue()
        for job in expired:
            self.metrics.job_finished(job.type, JobStatus.EXPIRED.value)
            await self.events.announce(job)
        return len(expired)

    async def cleanup(self) -> int:
        """Purge finished jobs past retention and drop old event streams; returns how many jobs were purged."""
        t = now()
        s = self.settings
        purged = await self.store.purge(
            completed_before=t - s.retention_completed,
            others_before=t - s.retention_failed,
            idempotency_before=t - 86400,
        )
        stale_streams = await self.store.finished_before(t - s.event_retention)
        keys = [stream_key(j) for j in [*purged, *stale_streams]]
        for i in range(0, len(keys), 500):
            await self.queue.redis.delete(*keys[i : i + 500])
        if purged:
            log.info("purged finished jobs", extra={"count": len(purged)})
        return len(purged)

    async def forget_keys(self) -> int:
        """Users' sealed provider keys of jobs that are over (expired, swept, cancelled while queued) are deleted."""
        return await job_secrets(self.store).delete_finished()

    def _turn_key(self) -> str:
        return f"{self.settings.queue_name}:sweep-turn"

    async def take_turn(self) -> bool:
        """Whether this worker sweeps this interval: True for one worker of all those asking within it."""
        ttl_ms = max(1, int(self.settings.sweep_seconds * 900))  # free again before the holder's next pass is due
        try:
            return bool(await self.queue.redis.set(self._turn_key(), self.worker_id or "-", nx=True, px=ttl_ms))
        except Exception as exc:
            log.info("sweep turn not checked; sweeping anyway", extra={"error": repr(exc)})
            return True

    async def give_back_turn(self) -> None:
        """A failed pass: let another worker sweep this interval (only if the turn is still this worker's)."""
        try:
            release = self.queue.redis.register_script(_RELEASE_TURN)
            await release(keys=[self._turn_key()], args=[self.worker_id or "-"])
        except Exception as exc:
            log.info("sweep turn not given back; it lapses", extra={"error": repr(exc)})

    async def sweep_if_my_turn(self) -> bool:
        """One maintenance pass, if the store answers and no other worker has swept this interval."""
        await self.store.ping()  # raises when the store is unreachable: this worker then does not take the turn
        if not await self.take_turn():
            return False
        try:
            await self.tick()
        except BaseException:
            await asyncio.shield(self.give_back_turn())
            raise
        return True

    async def tick(self) -> None:
        await self.sweep_leases()
        await self.expire()
        await self.reconcile()
        await self.reannounce()
        await self.forget_keys()

    async def run_forever(self) -> None:
        """Say this worker is alive every heartbeat; sweep, expire and reconcile every SWEEP_SECONDS."""
        s = self.settings
        next_sweep = time.monotonic() + min(s.sweep_seconds, 1.0)
        while True:
            try:
                await register_worker(
                    self.queue.redis, s.queue_name, self.worker_id, s.worker_concurrency, ttl=s.heartbeat_seconds * 3
                )
            except Exception as exc:
                log.warning("could not register the worker", extra={"error": repr(exc)})
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + s.sweep_seconds
                try:
                    await self.sweep_if_my_turn()
                except Exception as exc:
                    log.warning("maintenance pass failed", extra={"error": repr(exc)})
            await asyncio.sleep(min(s.heartbeat_seconds, s.sweep_seconds, max(0.05, next_sweep - time.monotonic())))
