"""The `aijobs` command: dev (everything on embedded defaults), web, worker, settings."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from .config import Settings, SettingsError, settings_table
from .embedded import die_with_parent, redis_url_for
from .files import private_dir
from .logs import setup_logging
from .models import iso

ROOT = Path(__file__).resolve().parent.parent


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"aijobs: bad setting: {exc}") from None


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL is set), then the Procfile's own lines through honcho."""
    settings = _settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    private_dir(settings.data_dir)
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        bin_dir = str(Path(sys.executable).parent)  # the Procfile's uvicorn/aijobs live beside this python
        env = dict(
            os.environ, REDIS_URL=url, PYTHONUNBUFFERED="1", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        )
        env.setdefault("DATABASE_URL", settings.database_url)
        env.setdefault("AIJOBS_DEMO_LOGIN", "true")  # dev only: the page signs in as `demo` by itself
        demo = asyncio.run(_ensure_user(settings, "demo")) if _parse_demo(env) else None
        env.setdefault("HOST", settings.host)
        port = settings.port
        ai = (
            "simulated AI provider (set AI_API_KEY to use a real one)"
            if settings.uses_simulated_ai
            else settings.ai_base_url or "OpenAI"
        )
        print(
            f"\n  aijobs is starting: open http://{settings.host}:{port}/\n"
            f"  Redis: {url}   store: {settings.database_url}   AI: {ai}\n"
            + (
                f"  Signed in as the demo user '{demo}' automatically (AIJOBS_DEMO_LOGIN=true; dev only).\n"
                "  API clients: make a token with `aijobs users create NAME`, send 'Authorization: Bearer <token>'.\n"
                if demo
                else ""
            ),
            flush=True,
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-p", str(port)],
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


def cmd_worker(args: argparse.Namespace) -> int:
    from arq.worker import Worker

    from .worker import build_worker

    settings = _settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    if not settings.redis_url:
        raise SystemExit("aijobs worker: REDIS_URL is not set: run `aijobs dev`, or point REDIS_URL at Redis.")
    worker: Worker = build_worker(settings, redis_url=settings.redis_url, burst=args.burst)
    worker.run()
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run("service.api.app:app_from_env", factory=True, host=settings.host, port=settings.port, log_config=None)
    return 0


def _parse_demo(env: dict[str, str]) -> bool:
    return env.get("AIJOBS_DEMO_LOGIN", "").strip().lower() in {"1", "true", "yes", "on"}


async def _ensure_user(settings: Settings, name: str) -> str:
    from .store.users import open_users

    async with open_users(settings) as users:
        return (await users.get_or_create(name)).name


async def _broadcast_revoked(settings: Settings, user_id: str) -> bool:
    """Tell every web process to forget the user's cached token now; False if Redis can't be reached."""
    from redis.asyncio import Redis

    from .coordination import publish_revoked

    if not settings.redis_url:
        return False
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        await publish_revoked(redis, user_id)
    except Exception:
        return False
    finally:
        await redis.aclose()
    return True


async def _users(args: argparse.Namespace, settings: Settings) -> int:
    from .store.users import TOKEN_CACHE_SECONDS, UserExists, open_users

    async with open_users(settings) as users:
        if args.action == "create":
            try:
                user, token = await users.create(args.name)
            except UserExists:
                print(f"aijobs users: a user named {args.name!r} already exists", file=sys.stderr)
                return 1
            print(f"Created user {user.name} ({user.id}). Its API token, shown this once (only a hash is kept):")
            print(f"\n  {token}\n")
            print("Send it as 'Authorization: Bearer <token>'.")
            return 0
        if args.action == "revoke":
            revoked = await users.revoke(args.name, reissue=args.new_token)
            if revoked is None:
                print(f"aijobs users: no user named {args.name!r}", file=sys.stderr)
                return 1
            user, token = revoked
            print(f"Revoked the API token of {user.name}.")
            if not await _broadcast_revoked(settings, user.id):
                print(
                    "Could not reach Redis to tell the web processes: they refuse the old token within "
                    f"{int(TOKEN_CACHE_SECONDS)} s (their token cache).",
                    file=sys.stderr,
                )
            if token:
                print(f"Its new API token, shown this once:\n\n  {token}\n")
            return 0
        for user in await users.list():
            print(f"{user.id}  {iso(user.created_at)}  {user.name}")
        return 0


def cmd_users(args: argparse.Namespace) -> int:
    """`aijobs users create NAME` (prints the token once), `aijobs users revoke NAME [--new-token]`, `users list`."""
    settings = _settings()
    if args.action == "revoke" and not args.name:
        raise SystemExit("aijobs users revoke: give the user's NAME")
    if args.action == "create" and not (args.name and len(args.name) <= 64 and args.name.isprintable()):
        raise SystemExit("aijobs users create: give the new user's NAME (1-64 printable characters)")
    return asyncio.run(_users(args, settings))


def cmd_settings(args: argparse.Namespace) -> int:
    rows = settings_table()
    width = max(len(r[0]) for r in rows)
    for env, default, doc in rows:
        print(f"{env:<{width}}  {default or '(unset)':<28}  {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aijobs", description="Slow AI requests as background jobs with live progress."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run web + worker on embedded defaults").set_defaults(fn=cmd_dev)
    sub.add_parser("web", help="run the web process (REDIS_URL required)").set_defaults(fn=cmd_web)
    w = sub.add_parser("worker", help="run a worker process (REDIS_URL required)")
    w.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    w.set_defaults(fn=cmd_worker)
    sub.add_parser("settings", help="list every setting with its default").set_defaults(fn=cmd_settings)
    u = sub.add_parser("users", help="create a user (prints its API token once), revoke its token, or list users")
    u.add_argument("action", choices=["create", "revoke", "list"])
    u.add_argument("name", nargs="?", help="the user's name (create, revoke)")
    u.add_argument("--new-token", action="store_true", help="revoke: issue a new token and print it once")
    u.set_defaults(fn=cmd_users)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
