"""The aijobs web app as the bench serves it: the real create_app, with the bench's job types registered.

uvicorn --factory bench.aijobs_app:app
"""

from __future__ import annotations

from starlette.applications import Starlette

from service.api.app import create_app
from service.config import Settings

from .tasks import bench_registry


def app() -> Starlette:
    settings = Settings.from_env()
    assert settings.redis_url, "the bench sets REDIS_URL"
    return create_app(settings, redis_url=settings.redis_url, registry=bench_registry())
