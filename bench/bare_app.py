"""The baseline web app: bare Starlette, one endpoint that only calls arq's enqueue_job, one that returns JSON.

uvicorn --factory bench.bare_app:app
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

from arq.connections import ArqRedis, RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# What GET /api/jobs/{id} answers for a finished no-op job, so both sides serialize the same amount.
SAMPLE_JOB = {
    "job_id": "00000000-0000-0000-0000-000000000000",
    "type": "noop",
    "status": "completed",
    "priority": 5,
    "progress": {"percentage": 100.0, "current_step": "Starting…", "estimated_time_remaining": None},
    "attempt": 1,
    "max_attempts": 1,
    "input": {},
    "result": None,
    "partial_output": None,
    "error": None,
    "model": None,
    "usage": None,
    "last_seq": 3,
    "created_at": "2026-01-01T00:00:00.000Z",
    "started_at": "2026-01-01T00:00:00.001Z",
    "completed_at": "2026-01-01T00:00:00.002Z",
    "updated_at": "2026-01-01T00:00:00.002Z",
}


def app() -> Starlette:
    queue_name = os.environ.get("BENCH_ARQ_QUEUE", "bench:bare")
    pool: dict[str, ArqRedis] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool["redis"] = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
        try:
            yield
        finally:
            await pool["redis"].aclose()

    async def enqueue(request: Request) -> Response:
        await request.body()
        job = await pool["redis"].enqueue_job("noop", _queue_name=queue_name)
        assert job is not None
        return JSONResponse({"job_id": job.job_id}, status_code=202)

    async def enqueue_function(request: Request) -> Response:
        """The e2e figure's POST: the body's `input` handed to the named function, as aijobs hands it to its type."""
        body = json.loads(await request.body())
        job = await pool["redis"].enqueue_job(request.path_params["function"], body["input"], _queue_name=queue_name)
        assert job is not None
        return JSONResponse({"job_id": job.job_id}, status_code=202)

    async def get_json(request: Request) -> Response:
        return JSONResponse({**SAMPLE_JOB, "job_id": request.path_params["job_id"]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/enqueue", enqueue, methods=["POST"]),
            Route("/enqueue/{function}", enqueue_function, methods=["POST"]),
            Route("/json/{job_id}", get_json, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
