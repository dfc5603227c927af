"""Logs a machine can follow: one job's lines, from the POST in the web process to the worker's last line, carry its
job id, user, attempt and the request's id; no secret reaches a line (real processes, their real log output).
And the optional OpenTelemetry spans: POST → run → provider call, one trace."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx

from service.api.app import create_app
from service.embedded import EmbeddedRedis
from service.logs import JsonFormatter, Redactor, TextFormatter, bind, unbind

from .conftest import fast_settings, make_user, run_worker, serve, wait_for_status
from .fake_openai import serve_fake_openai
from .procs import WorkerProcess, web_process

SERVER_KEY = "sk-server-key-of-the-operator-0001"
USER_KEY = "sk-users-own-key-of-alice-000000002"
KEY_IN_INPUT = "sk-pasted-into-the-input-000000003"
SECRET_KEY = "server-secret-key-for-sealing-and-signing-000000004"


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # every structured line is whole JSON, redaction included
    return out


async def test_one_jobs_lines_from_post_to_worker_carry_its_ids_and_no_secret(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = fast_settings(redis_server, tmp_path)
    token = await make_user(settings, "alice")
    text = f"Title this: my key is {KEY_IN_INPUT}, and my token: Bearer {token}"
    async with serve_fake_openai() as fake:
        # The provider refuses the prompt and quotes it back, as real ones do: the job's error (and so the worker's
        # "job failed" line) then holds the input's secrets, which the log redactor must mask.
        fake.next_error(400, body={"error": {"message": f"Invalid prompt: {text}", "type": "invalid_request_error"}})
        env = {
            "LOG_JSON": "true",
            "AI_BASE_URL": fake.base_url,
            "AI_API_KEY": SERVER_KEY,
            "SECRET_KEY": SECRET_KEY,
            "AIJOBS_DATA_DIR": str(settings.data_dir),
        }
        worker = WorkerProcess(settings, tmp_path / "worker.log", **env)
        try:
            async with web_process(settings, tmp_path / "web.log", **env) as web:
                headers = {
                    "Authorization": f"Bearer {token}",
                    "X-Request-ID": "req-4f2a-from-the-client",
                    "X-Provider-Key": USER_KEY,
                }
                async with httpx.AsyncClient(base_url=web.url, timeout=10, headers=headers) as alice:
                    r = await alice.post("/api/jobs", json={"type": "titles", "input": {"text": text}})
                    assert r.status_code == 202, r.text
                    assert r.headers["x-request-id"] == "req-4f2a-from-the-client"
                    job_id = r.json()["job_id"]
                    body = await wait_for_status(alice, job_id, {"failed"}, timeout=20)
                    assert body["error"]["code"] == "provider_bad_request"
                    assert fake.requests[-1].headers["authorization"] == f"Bearer {USER_KEY}"  # the user's key went
        finally:
            worker.signal(15)
            await worker.wait_exit()
            worker.stop()

    web_lines, worker_lines = json_lines(tmp_path / "web.log"), json_lines(tmp_path / "worker.log")
    everything = (tmp_path / "web.log").read_text() + (tmp_path / "worker.log").read_text()
    for secret in (SERVER_KEY, USER_KEY, KEY_IN_INPUT, token, SECRET_KEY):
        assert secret not in everything

    about = [line for line in web_lines + worker_lines if line.get("job_id") == job_id]
    user_id = next(line["user_id"] for line in about)
    for line in about:
        assert line["request_id"] == "req-4f2a-from-the-client", line
        assert line["user_id"] == user_id and isinstance(line["attempt"], int), line
    said = {(line["logger"], line["msg"], line["attempt"]) for line in about}
    assert ("aijobs.jobs", "job accepted", 0) in said  # the web process, at the POST
    assert ("aijobs.runner", "job started", 1) in said  # the worker process
    failed = next(line for line in about if line["msg"] == "job failed")
    assert failed["attempt"] == 1 and failed["code"] == "provider_bad_request"
    # the provider's quote of the input reached the line, masked: the key's prefix stays, its secret part does not
    assert "sk-***" in failed["error"] and "Bearer ***" in failed["error"], failed


def test_the_redactor_masks_secrets_and_keeps_a_json_line_json() -> None:
    redact = Redactor(["exact-server-secret-1234", 'with"quote'])
    line = json.dumps(
        {
            "msg": "calling with Authorization: Bearer aij_abcdefghijklmnop and key sk-proj-ABCDEF_123456",
            "url": "postgresql://app:hunter2@db.example/aijobs",
            "cookie": "aijobs_session=eyJ1c2VyIjoi.sig; other=1",
            "error": 'exact-server-secret-1234 and with"quote',
        }
    )
    masked = redact(line)
    data = json.loads(masked)
    assert data["msg"] == "calling with Authorization: Bearer *** and key sk-***"
    assert data["url"] == "postgresql://app:***@db.example/aijobs"
    assert data["cookie"] == "aijobs_session=***; other=1"
    assert data["error"] == "*** and ***"
    assert redact("a token aij_abcdefghijklmnop alone") == "a token aij_*** alone"
    assert redact("nothing secret: sk-1 is too short, risk-free") == "nothing secret: sk-1 is too short, risk-free"


def test_formatters_add_the_bound_fields_and_mask_secret_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "aijobs.test", "levelname": "INFO", "msg": "hello", "api_key": "plain", "job_id": "j-extra"}
    )
    token = bind(request_id="r1", job_id="j1", user_id="u1", attempt=2)
    try:
        out = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    finally:
        unbind(token)
    assert (out["request_id"], out["user_id"], out["attempt"]) == ("r1", "u1", 2)
    assert out["job_id"] == "j-extra"  # the call's own field wins over the bound one
    assert out["api_key"] == "***"
    assert "request_id=r1" in text and "attempt=2" in text
    after = json.loads(JsonFormatter().format(record))
    assert "request_id" not in after  # unbound: the next work's lines do not inherit it


async def test_tracing_follows_a_job_from_the_post_through_the_provider_call(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = fast_settings(redis_server, tmp_path, tracing=True, sim_delay=0.05)
    assert settings.redis_url
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    app = create_app(settings, redis_url=settings.redis_url, tracer_provider=provider)
    async with serve(app) as web, run_worker(settings, tracer_provider=provider):
        token = await make_user(settings, "alice")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{caller_trace}-{caller_span}-01"}
        async with httpx.AsyncClient(base_url=web.url, timeout=10, headers=headers) as alice:
            r = await alice.post("/api/jobs", json={"type": "titles", "input": {"text": "Traced all the way"}})
            assert r.status_code == 202
            assert r.headers["x-request-id"] == caller_trace  # no X-Request-ID sent: the trace id is the request's
            await wait_for_status(alice, r.json()["job_id"], {"completed"})
        for _ in range(100):  # the run's span ends just after its completion is written
            if any(s.name == "run titles" for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.02)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    post, run, call = spans["POST /api/jobs"], spans["run titles"], spans["chat sim-1"]
    assert {s.context.trace_id for s in (post, run, call)} == {int(caller_trace, 16)}
    assert post.parent is not None and post.parent.span_id == int(caller_span, 16) and post.kind is SpanKind.SERVER
    assert run.parent is not None and run.parent.span_id == post.context.span_id and run.kind is SpanKind.CONSUMER
    assert call.parent is not None and call.parent.span_id == run.context.span_id and call.kind is SpanKind.CLIENT
    assert run.attributes is not None and run.attributes["aijobs.outcome"] == "completed"
    assert call.attributes is not None and call.attributes["gen_ai.usage.output_tokens"] > 0
