"""Upstream image responses vary (issue 15.15): raster data: URLs are taken, SVG and unusable answers are refused
with a clear, non-retryable error. Through real jobs: web and worker on real uvicorn/Redis, the provider a local
OpenAI-compatible server (tests/fake_openai.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings

from .conftest import run_worker, serve, user_client, wait_for_status
from .fake_openai import TINY_IMAGES, FakeOpenAI, serve_fake_openai

SVG = "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciPjxzY3JpcHQ+YWxlcnQoMSk8L3NjcmlwdD48L3N2Zz4="


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[tuple[FakeOpenAI, httpx.AsyncClient]]:
    async with serve_fake_openai() as fake:
        s = dataclasses.replace(
            settings, ai_base_url=fake.base_url, ai_api_key="sk-server", ai_model="chat-test", ai_image_model="img-test"
        )
        assert s.redis_url
        async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "ivy") as ivy:
            async with run_worker(s):
                yield fake, ivy


async def image_job(client: httpx.AsyncClient, n: int = 1) -> dict[str, Any]:
    r = await client.post("/api/jobs", json={"type": "image", "input": {"prompt": "a red fox", "n": n}})
    assert r.status_code == 202, r.text
    return await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})


@pytest.mark.parametrize("kind", ["image/png", "image/jpeg", "image/webp", "image/gif"])
async def test_a_raster_data_url_in_url_is_the_jobs_image(
    kind: str, stack: tuple[FakeOpenAI, httpx.AsyncClient]
) -> None:
    fake, client = stack
    fake.images_as, fake.image_type = "data_url", kind
    job = await image_job(client, n=2)
    assert job["status"] == "completed", job["error"]
    assert job["result"] == {"images": [f"data:{kind};base64,{TINY_IMAGES[kind]}"] * 2}
    assert job["model"] == "img-test", "the image model answered, not the chat model"


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"url": f"data:image/svg+xml;base64,{SVG}"}, "an SVG image, which aijobs does not accept"),
        ({"b64_json": SVG}, "its bytes are SVG"),
        ({"url": f"data:image/png;base64,{TINY_IMAGES['image/jpeg']}"}, "declared image/png but its bytes are"),
        ({"url": "data:image/png;base64,@@not base64@@"}, "its base64 does not decode"),
        ({"url": "data:image/png,%89PNG"}, "not base64-encoded"),
        ({"url": "data:text/html;base64,PGI+aGk8L2I+"}, "of type 'text/html'"),
        ({"revised_prompt": "a fox"}, "neither `url` nor `b64_json`"),
    ],
)
async def test_an_unusable_image_response_fails_the_job_at_once_saying_why(
    item: dict[str, str], says: str, stack: tuple[FakeOpenAI, httpx.AsyncClient]
) -> None:
    fake, client = stack
    fake.next_response({"created": 0, "data": [item]})
    job = await image_job(client)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_bad_response" and job["error"]["retryable"] is False, job["error"]
    assert says in job["error"]["message"] and "AI_IMAGE_MODEL" in job["error"]["message"], job["error"]
    assert job["attempt"] == 1 and len(fake.requests) == 1, "not retried: the same request would fail again"
    assert [a["model"] for a in job["attempts"]] == ["img-test"], "the attempt names the image model"
    history = (await client.get("/api/jobs", params={"type": "image"})).json()["jobs"]
    assert [(j["job_id"], j["model"]) for j in history] == [(job["job_id"], job["model"])], history
    assert job["model"] is None, "no model answered (and never the chat model)"


async def test_an_empty_image_list_is_not_retried(stack: tuple[FakeOpenAI, httpx.AsyncClient]) -> None:
    fake, client = stack
    fake.next_response({"created": 0, "data": []})
    job = await image_job(client)
    assert (job["status"], job["error"]["code"], job["attempt"]) == ("failed", "provider_bad_response", 1)
    assert "held no images" in job["error"]["message"]


async def test_usable_images_are_kept_and_an_unusable_one_left_out(
    stack: tuple[FakeOpenAI, httpx.AsyncClient],
) -> None:
    fake, client = stack
    png = f"data:image/png;base64,{TINY_IMAGES['image/png']}"
    fake.next_response({"data": [{"url": f"data:image/svg+xml;base64,{SVG}"}, {"url": png}]})
    job = await image_job(client, n=2)
    assert job["status"] == "completed" and job["result"] == {"images": [png]}


async def test_a_failed_simulated_image_attempt_names_the_image_model(
    client: httpx.AsyncClient, worker: object
) -> None:
    r = await client.post("/api/jobs", json={"type": "image", "input": {"prompt": "a fox [[fail:400]]"}})
    job = await wait_for_status(client, r.json()["job_id"], {"failed"})
    assert [a["model"] for a in job["attempts"]] == ["sim-image-1"], job["attempts"]
