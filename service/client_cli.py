"""`aijobs submit`, `aijobs jobs ls|show|watch|cancel|retry` and `aijobs stats`: a running server's API from a
terminal or a script, with a token (`AIJOBS_URL`, `AIJOBS_TOKEN`), like any client.

For people: `--watch` draws a live progress bar with the current step, the server's estimate of the time left and
the streamed text (rich), then prints the result. For scripts: `--json` prints JSON (with `--watch`, one line per
event and the final job last), and the exit code says how it ended: 0 completed (or done), 1 failed (or the server
refused or could not be reached), 2 cancelled or expired, 3 a usage error (bad arguments, or input the server
rejected as invalid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .client import Client, ClientError

EXIT_OK, EXIT_FAILED, EXIT_STOPPED, EXIT_USAGE = 0, 1, 2, 3
EXIT_BY_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_STOPPED, "expired": EXIT_STOPPED}
USAGE_CODES = {"invalid_input", "invalid_request", "invalid_json", "unknown_job_type", "idempotency_key_reused"}
DEFAULT_URL = "http://127.0.0.1:8000"
TAIL_LINES = 12  # streamed text shown under the bar while the job runs (all of it is printed at the end)


class UsageError(Exception):
    pass


def text_input(job_type: str, text: str) -> dict[str, Any]:
    """`--input "some words"`: the type's main field, so the common case needs no JSON."""
    if job_type == "chat":
        return {"messages": [{"role": "user", "content": text}]}
    if job_type == "image":
        return {"prompt": text}
    return {"text": text}


def parse_input(job_type: str, raw: str | None, sets: list[str]) -> dict[str, Any]:
    """`--input` as JSON (`{…}`), `@FILE` (JSON), `-` (JSON on stdin) or plain text; then each `--set key=value`
    (the value read as JSON when it is, else as text)."""
    payload: dict[str, Any] = {}
    if raw is not None:
        if raw == "-" or raw.startswith("@"):
            source = sys.stdin.read() if raw == "-" else _read(raw[1:])
            try:
                loaded = json.loads(source)
            except ValueError as exc:
                raise UsageError(f"--input {raw}: not JSON ({exc})") from None
        elif raw.lstrip().startswith("{"):
            try:
                loaded = json.loads(raw)
            except ValueError as exc:
                raise UsageError(f"--input: not valid JSON ({exc}); plain text needs no braces") from None
        else:
            loaded = text_input(job_type, raw)
        if not isinstance(loaded, dict):
            raise UsageError("--input must be a JSON object (or plain text)")
        payload.update(loaded)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: write it as key=value")
        try:
            payload[key] = json.loads(value)
        except ValueError:
            payload[key] = value
    if not payload:
        raise UsageError("give the job's input: --input TEXT, --input '{json}', --input @file.json or --set key=value")
    return payload


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def result_lines(job: dict[str, Any]) -> list[str]:
    """The job's outcome as a person reads it."""
    result = job.get("result") or {}
    if job.get("status") != "completed":
        err = job.get("error") or {}
        return [f"{job.get('status')}: {err.get('message') or 'no result'}" + (f" ({err['code']})" if err else "")]
    if "titles" in result:
        return [f"{i}. {t}" for i, t in enumerate(result["titles"], 1)]
    if "summary" in result:
        return [result["summary"]]
    if "reply" in result:
        return [result["reply"]]
    if "images" in result:
        return [_image_line(url) for url in result["images"]]
    return [json.dumps(result, indent=2)]


def _image_line(url: str) -> str:
    """An https URL as is; a data: URL (can be megabytes) as its type and size (`--json` has it whole)."""
    if not url.startswith("data:"):
        return url
    return f"{url.split(';', 1)[0]} image, {len(url) * 3 // 4 // 1024} KB (--json prints it whole)"


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return f"~{seconds:.0f} s left" if seconds >= 1 else "<1 s left"


async def watch(client: Client, job: dict[str, Any], *, as_json: bool) -> dict[str, Any]:
    """Follow the job to its end; returns it as it ended (read once more, so it is whole). The bar goes to stderr,
    as curl's and pip's do, so stdout holds only the result (`aijobs submit … --watch > out.txt`)."""
    job_id = job["job_id"]
    if as_json:
        async for event in client.events(job_id):
            print(json.dumps(event), flush=True)
        return await client.job(job_id)
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn
    from rich.text import Text

    console = Console(stderr=True)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[status]:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.description}"),
        TextColumn("[dim]{task.fields[eta]}"),
        console=console,
    )
    task = bar.add_task("Queued…", total=100, status="queued", eta="")
    streamed = ""
    tail = Text()
    with Live(Group(bar, tail), console=console, refresh_per_second=10, transient=True):
        async for event in client.events(job_id):
            kind = event.get("kind")
            fields: dict[str, Any] = {}
            if kind == "snapshot":
                snap = event["job"]
                progress = snap.get("progress") or {}
                streamed = snap.get("partial_output") or ""
                fields = {"status": snap["status"], "completed": progress.get("percentage") or 0}
                fields["description"] = progress.get("current_step") or ""
                fields["eta"] = _eta(progress.get("estimated_time_remaining"))
            elif kind == "progress":
                fields = {"completed": event.get("percentage") or 0, "eta": _eta(event.get("estimated_time_remaining"))}
                if event.get("current_step"):
                    fields["description"] = event["current_step"]
            elif kind == "status":
                fields = {"status": event["status"], "completed": event.get("percentage") or 0}
                if event.get("current_step"):
                    fields["description"] = event["current_step"]
            elif kind == "delta":
                streamed += event.get("text", "")
            elif kind == "position":
                queue = event.get("queue") or {}
                if queue.get("position") is not None:
                    fields = {"description": f"#{queue['position']} in the queue"}
                fields["eta"] = _eta(event.get("estimated_time_remaining"))
            if fields:
                bar.update(task, **fields)
            if kind in ("delta", "snapshot"):
                tail.plain = "\n".join(streamed.splitlines()[-TAIL_LINES:])
    final = await client.job(job_id)
    console.print(f"[bold]{final['status']}[/bold] {job_id}")
    return final


def _print_job(job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    print(f"job      {job['job_id']}  ({job['type']}, priority {job.get('priority')})")
    print(f"status   {job['status']}  {progress.get('percentage', 0):.0f}%  {progress.get('current_step') or ''}")
    print(f"attempt  {job.get('attempt')} of {job.get('max_attempts')}")
    for key in ("created_at", "started_at", "completed_at"):
        if job.get(key):
            print(f"{key.removesuffix('_at'):<9}{job[key]}")
    if job.get("model"):
        usage = job.get("usage") or {}
        print(
            f"model    {job.get('provider')}/{job['model']}  tokens {usage.get('prompt_tokens')}+"
            f"{usage.get('completion_tokens')}"
        )
    if job["status"] in EXIT_BY_STATUS:
        print()
        print("\n".join(result_lines(job)))
    elif job.get("partial_output"):
        print()
        print(job["partial_output"])


async def _finish(client: Client, job: dict[str, Any], args: argparse.Namespace) -> int:
    """After a submit or retry: follow it (`--watch`) and exit by how it ended, or print it and exit 0."""
    if not args.watch:
        print(json.dumps(job) if args.json else f"{job['job_id']}  {job['status']}  {job.get('links', {}).get('self')}")
        return EXIT_OK
    if not args.json:
        print(f"{job['job_id']}  ({job['type']})", file=sys.stderr)
    final = await watch(client, job, as_json=args.json)
    if args.json:
        print(json.dumps(final))
    else:
        print("\n".join(result_lines(final)))
    return EXIT_BY_STATUS.get(final["status"], EXIT_FAILED)


async def run(args: argparse.Namespace) -> int:
    async with Client(args.url, args.token) as client:
        if args.command == "submit":
            payload = parse_input(args.type, args.input, args.set or [])
            job = await client.submit(args.type, payload, priority=args.priority, idempotency_key=args.idempotency_key)
            return await _finish(client, job, args)
        if args.command == "stats":
            stats = await client.stats()
            print(json.dumps(stats) if args.json else _stats_text(stats))
            return EXIT_OK
        action = args.jobs_command
        if action == "ls":
            page = await client.jobs(
                status=args.status, type=args.type, since=args.since, limit=args.limit, cursor=args.cursor
            )
            if args.json:
                print(json.dumps(page))
            else:
                for job in page["jobs"]:
                    step = (job.get("progress") or {}).get("current_step") or ""
                    print(f"{job['job_id']}  {job['type']:<8} {job['status']:<10} {job['created_at']}  {step}")
                if page.get("next_cursor"):
                    print(f"more: aijobs jobs ls --cursor {page['next_cursor']}", file=sys.stderr)
            return EXIT_OK
        if action == "show":
            job = await client.job(args.job_id)
            if args.json:
                print(json.dumps(job))
            else:
                _print_job(job)
            return EXIT_OK
        if action == "watch":
            job = await client.job(args.job_id)
            args.watch = True
            return await _finish(client, job, args)
        if action == "cancel":
            job = await client.cancel(args.job_id)
            print(json.dumps(job) if args.json else f"{job['job_id']}  {job['status']}")
            return EXIT_OK
        if action == "retry":
            key = os.environ.get(args.provider_key_env) if args.provider_key_env else None
            if args.provider_key_env and not key:
                raise UsageError(f"--provider-key-env {args.provider_key_env}: that variable is not set")
            job = await client.retry(args.job_id, provider_key=key)
            return await _finish(client, job, args)
    raise UsageError(f"unknown command {args.command}")


def _stats_text(stats: dict[str, Any]) -> str:
    """`aijobs stats` for a person: the queue now, the last window's times by type, and the caller's own totals."""
    workers = stats.get("workers") or {}
    minutes = (stats.get("window_seconds") or 3600) / 60
    lines = [
        f"queue     {stats.get('total_queued', 0)} waiting, {stats.get('total_processing', 0)} running; "
        f"a new job would wait ~{stats.get('estimated_wait_time') or 0:.1f} s",
        f"workers   {workers.get('live', 0)} live, {workers.get('capacity', 0)} slots",
        f"last {minutes:.0f} min  completed {stats.get('total_completed', 0)}, failed {stats.get('total_failed', 0)}, "
        f"cancelled {stats.get('total_cancelled', 0)}, expired {stats.get('total_expired', 0)}; "
        f"wait {stats.get('average_wait_time') or 0:.2f} s, run {stats.get('average_run_time') or 0:.2f} s on average",
    ]
    for row in stats.get("by_type") or []:
        lines.append(
            f"  {row['type']:<8} {row.get('completed', 0)}/{row.get('started', 0)} completed, "
            f"wait {row.get('average_wait_time') or 0:.2f} s, run {row.get('average_run_time') or 0:.2f} s"
        )
    user = stats.get("user") or {}
    if user:
        counts = ", ".join(f"{n} {status}" for status, n in (user.get("by_status") or {}).items() if n)
        lines.append(
            f"you       {user.get('jobs', 0)} jobs ({counts or 'none'}), {user.get('active', 0)} active; tokens "
            f"{user.get('prompt_tokens', 0)} in, {user.get('completion_tokens', 0)} out; "
            f"cost ${user.get('cost') or 0:.4f}"
        )
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """The client commands, on `aijobs`' subcommand parser."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("AIJOBS_URL", DEFAULT_URL), help="server (AIJOBS_URL)")
        p.add_argument("--token", default=os.environ.get("AIJOBS_TOKEN"), help="API token (AIJOBS_TOKEN)")
        p.add_argument("--json", action="store_true", help="print JSON (with --watch: one line per event)")
        p.set_defaults(fn=main_client)

    s = sub.add_parser("submit", help="submit a job to a running server (AIJOBS_URL, AIJOBS_TOKEN); --watch follows it")
    s.add_argument("type", help="job type: titles, summary, chat, image")
    s.add_argument("--input", "-i", help="plain text, a JSON object, @FILE.json, or - (JSON on stdin)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="one input field (repeatable)")
    s.add_argument("--priority", type=int, help="0 (first) to 9 (last); default 5")
    s.add_argument("--idempotency-key", help="the same key within 24 h gives back the same job")
    s.add_argument("--watch", "-w", action="store_true", help="follow it live to its end and print the result")
    common(s)
    j = sub.add_parser("jobs", help="your jobs on a running server: ls, show, watch, cancel, retry")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser("ls", help="your history, newest first")
    ls.add_argument("--status", help="comma-separated statuses")
    ls.add_argument("--type", help="comma-separated job types")
    ls.add_argument("--since", help="unix seconds, a date (2026-01-31) or an RFC 3339 date-time")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor", help="the next page (printed after a full page)")
    common(ls)
    for name, text in (("show", "one job now"), ("watch", "follow a job live to its end"), ("cancel", "cancel a job")):
        p = jsub.add_parser(name, help=text)
        p.add_argument("job_id")
        common(p)
    r = jsub.add_parser("retry", help="run a failed, cancelled or expired job again (a new job)")
    r.add_argument("job_id")
    r.add_argument("--watch", "-w", action="store_true")
    r.add_argument(
        "--provider-key-env", metavar="VAR", help="for a job that ran on your own key: the variable holding it"
    )
    common(r)
    st = sub.add_parser("stats", help="queue, wait and run times, and your totals")
    common(st)


def main_client(args: argparse.Namespace) -> int:
    if not args.token:
        print(
            "aijobs: set AIJOBS_TOKEN (or --token) to an API token: `aijobs users create NAME` makes one",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        print(f"aijobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"aijobs: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 422) or exc.code in USAGE_CODES else EXIT_FAILED
    except BrokenPipeError:  # `aijobs jobs ls | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:
        print("aijobs: stopped watching (the job goes on; `aijobs jobs watch ID` follows it again)", file=sys.stderr)
        return 130
