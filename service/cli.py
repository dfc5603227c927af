"""The `aijobs` command: dev (everything on embedded defaults), web, worker, migrate, store copy, users, settings."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from .client_cli import EXIT_USAGE
from .client_cli import add_commands as add_client_commands
from .config import Settings, SettingsError, is_loopback_host, mask_redis_url, settings_table
from .embedded import die_with_parent, embedded_redis_url, redis_url_for
from .files import private_dir
from .logs import setup_logging
from .models import iso

ROOT = Path(__file__).resolve().parent.parent


def cli_name() -> str:
    """How to run this command again from a shell: `scripts/aijobs` in a checkout (the venv's bin is not on PATH)."""
    return "scripts/aijobs" if (ROOT / "scripts" / "aijobs").is_file() else "aijobs"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"aijobs: bad setting: {exc}") from None


def port_problem(host: str, port: int) -> str | None:
    """Why the web process could not listen on host:port (checked before anything starts), or None."""
    if port == 0:
        return None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: only a listener conflicts
            s.bind(addr)
    except OSError as exc:
        return (
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program holds that port. "
            f"Set PORT to a free one, e.g. `PORT={port + 1} scripts/dev`."
        )
    return None


def _migrate(settings: Settings) -> str:
    from .store import migrate

    before, after = asyncio.run(migrate(settings))
    where = settings.database_url_shown
    if before == after:
        return f"{where}: schema already at version {after}, nothing to do"
    return f"{where}: schema migrated from version {before} to {after}"


def _check_schema(settings: Settings, command: str) -> None:
    """Refuse to start against a schema older or newer than this code, saying what to run (the store's open()
    checks too, but inside uvicorn's lifespan or arq's startup that would end as a traceback)."""
    from .store import StoreOpenError, open_store

    async def check() -> None:
        store = open_store(settings)
        await store.open()
        await store.close()

    try:
        asyncio.run(check())
    except StoreOpenError as exc:
        raise SystemExit(f"aijobs {command}: {exc}") from None


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the store's pending migrations: once per deploy, from any one host (several at once take turns)."""
    from .store import StoreOpenError

    settings = _settings()
    try:
        print(f"aijobs migrate: {_migrate(settings)}")
    except StoreOpenError as exc:
        raise SystemExit(f"aijobs migrate: {exc}") from None
    return 0


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy a SQLite store into a migrated PostgreSQL one; run again after an interruption, it continues."""
    import psycopg

    from .store.copy import CopyError, copy_store

    try:
        copied = copy_store(args.source, args.destination, batch_size=args.batch_size, say=_say)
    except CopyError as exc:
        raise SystemExit(f"aijobs store copy: {exc}") from None
    except (psycopg.Error, KeyboardInterrupt) as exc:
        why = f"{type(exc).__name__}: {str(exc).strip()}" if isinstance(exc, psycopg.Error) else "interrupted"
        raise SystemExit(
            f"aijobs store copy: stopped ({why}). What was copied stays; run the same command again and it "
            "continues where it stopped, without duplicates."
        ) from None
    new = sum(c.copied for c in copied)
    if new == 0:
        print("Nothing new to copy: the destination already holds every row of the source.")
    else:
        print(f"Copied {new} rows. Point DATABASE_URL at the destination and start web and workers.")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _long_running(procfile: Path) -> list[str]:
    """The Procfile's process types to start: all but `release`, the one-off a platform runs before each deploy
    (`aijobs migrate`; SQLite migrates itself on open, and dev migrates PostgreSQL itself above)."""
    names = [line.split(":", 1)[0].strip() for line in procfile.read_text().splitlines() if ":" in line]
    return [name for name in names if name and not name.startswith("#") and name != "release"]


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL is set), then the Procfile's own lines through honcho."""
    settings = _settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, secrets=settings.secret_values())
    problem = port_problem(settings.host, settings.port)
    if problem:
        raise SystemExit(f"aijobs dev: {problem}")
    private_dir(settings.data_dir)
    if settings.uses_postgres:  # dev migrates whatever it is pointed at; web/worker alone never do for PostgreSQL
        print(f"  {_migrate(settings)}", flush=True)
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        bin_dir = str(Path(sys.executable).parent)  # the Procfile's uvicorn/aijobs live beside this python
        env = dict(
            os.environ, REDIS_URL=url, PYTHONUNBUFFERED="1", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        )
        env.setdefault("DATABASE_URL", settings.database_url)
        env.setdefault("COOKIE_SECURE", "false")  # dev serves plain http: a Secure cookie would not come back
        if is_loopback_host(settings.host):  # dev only, and only on loopback (Settings refuses it elsewhere)
            env.setdefault("AIJOBS_DEMO_LOGIN", "true")  # the page signs in as `demo` by itself
        demo = asyncio.run(_ensure_user(settings, "demo")) if _parse_demo(env) else None
        env.setdefault("HOST", settings.host)
        port = settings.port
        ai = (
            "simulated AI provider (set AI_API_KEY to use a real one)"
            if settings.uses_simulated_ai
            else settings.ai_base_url or "OpenAI"
        )
        shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        print(
            f"\n  aijobs is starting: open http://{shown}:{port}/\n"
            f"  Redis: {url}   store: {settings.database_url_shown}   AI: {ai}\n"
            + (
                f"  Signed in as the demo user '{demo}' automatically (AIJOBS_DEMO_LOGIN=true; dev only).\n"
                if demo
                else ""
            )
            + f"  API clients: make a token with `{cli_name()} users create NAME` in another shell, and send\n"
            "  'Authorization: Bearer <token>'.\n",
            flush=True,
        )
        # A SIGTERM (a process manager, `kill`) or SIGHUP (the terminal closed) stops it as Ctrl-C does: web and
        # worker are stopped in turn, then Redis, and var/redis.url is removed (no later CLI aims at a dead Redis).
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
        honcho = [
            sys.executable,
            "-m",
            "honcho",
            "start",
            "-f",
            str(ROOT / "Procfile"),
            "-d",
            str(ROOT),
            "-p",
            str(port),
        ]
        proc = subprocess.Popen(
            [*honcho, *_long_running(ROOT / "Procfile")],
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_worker(args: argparse.Namespace) -> int:
    from arq.worker import Worker

    from .worker import build_worker, tune_gc

    settings = _settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, secrets=settings.secret_values())
    if not settings.redis_url:
        raise SystemExit(
            "aijobs worker: REDIS_URL is not set: point it at Redis, or run `scripts/dev` (`aijobs dev`), which starts "
            "an embedded Redis with web and worker."
        )
    _check_schema(settings, "worker")
    worker: Worker = build_worker(settings, redis_url=settings.redis_url, burst=args.burst)
    tune_gc()
    worker.run()
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    _check_schema(settings, "web")
    uvicorn.run(
        "service.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # one line per request costs more than the request (see the README's Performance)
        ws_max_size=settings.ws_max_size,
    )
    return 0


def _parse_demo(env: dict[str, str]) -> bool:
    return env.get("AIJOBS_DEMO_LOGIN", "").strip().lower() in {"1", "true", "yes", "on"}


async def _ensure_user(settings: Settings, name: str) -> str:
    from .store import open_users

    async with open_users(settings) as users:
        return (await users.get_or_create(name)).name


def redis_for_cli(settings: Settings) -> str | None:
    """REDIS_URL, or the embedded Redis of an `aijobs dev` running on this data directory (it writes its URL)."""
    return settings.redis_url or embedded_redis_url(settings.data_dir)


async def _broadcast_revoked(settings: Settings, user_id: str) -> str | None:
    """Tell every web process to forget the user's cached token now; None if done, else why it could not."""
    from .coordination import publish_revoked
    from .redis_url import redis_client

    url = redis_for_cli(settings)
    if not url:
        return "REDIS_URL is not set and no `scripts/dev` is running on this data directory"
    redis = redis_client(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        await publish_revoked(redis, user_id)
    except Exception as exc:
        return f"Redis at {mask_redis_url(url)} did not answer ({exc.__class__.__name__})"
    finally:
        await redis.aclose()
    return None


async def _users(args: argparse.Namespace, settings: Settings) -> int:
    from .store import open_users
    from .store.users import TOKEN_CACHE_SECONDS, UserExists

    async with open_users(settings) as users:
        if args.action == "create":
            try:
                user, token = await users.create(args.name, operator=args.operator)
            except UserExists:
                print(f"aijobs users: a user named {args.name!r} already exists", file=sys.stderr)
                return 1
            role = "operator " if user.operator else ""
            print(f"Created {role}user {user.name} ({user.id}) in {settings.database_url}.")
            if user.operator:
                print("Signed in with its token, it may open /admin (the operator page).")
            print("Its API token, shown this once (only a hash is kept):")
            print(f"\n  {token}\n")
            print("Send it as 'Authorization: Bearer <token>'.")
            return 0
        if args.action == "revoke":
            revoked = await users.revoke(args.name, reissue=args.new_token)
            if revoked is None:
                print(f"aijobs users: no user named {args.name!r}", file=sys.stderr)
                return 1
            user, new_token = revoked
            print(f"Revoked the API token of {user.name}.")
            problem = await _broadcast_revoked(settings, user.id)
            if problem:
                print(
                    f"Could not reach Redis to tell the web processes ({problem}): they refuse the old token "
                    f"within {int(TOKEN_CACHE_SECONDS)} s (their token cache). To make it at once, set REDIS_URL "
                    f"to the Redis your web processes use and run `{cli_name()} users revoke {user.name}` again.",
                    file=sys.stderr,
                )
            if new_token:
                print(f"Its new API token, shown this once:\n\n  {new_token}\n")
            return 0
        if args.action == "operator":
            changed = await users.set_operator(args.name, not args.off)
            if changed is None:
                print(f"aijobs users: no user named {args.name!r}", file=sys.stderr)
                return 1
            if changed.operator:
                print(f"{changed.name} is an operator now: signed in, it may open /admin.")
            else:
                print(f"{changed.name} is no longer an operator: /admin answers it 404 from its next request.")
            return 0
        for user in await users.list():
            print(f"{user.id}  {iso(user.created_at)}  {user.name}{'  (operator)' if user.operator else ''}")
        return 0


def cmd_users(args: argparse.Namespace) -> int:
    """`aijobs users create NAME [--operator]` (prints the token once), `aijobs users revoke NAME [--new-token]`,
    `aijobs users operator NAME [--off]` (give or take the operator role), `users list`."""
    settings = _settings()
    if args.action in ("revoke", "operator") and not args.name:
        raise SystemExit(f"aijobs users {args.action}: give the user's NAME")
    if args.operator and args.action != "create":
        raise SystemExit("aijobs users: --operator goes with create; for an existing user: users operator NAME")
    if args.off and args.action != "operator":
        raise SystemExit("aijobs users: --off goes with `users operator NAME`")
    if args.action == "create" and not (args.name and len(args.name) <= 64 and args.name.isprintable()):
        raise SystemExit("aijobs users create: give the new user's NAME (1-64 printable characters)")
    if not os.environ.get("DATABASE_URL") and not settings.sqlite_path.exists():
        # Never make a second, empty store in a place derived from defaults, which the running server does not
        # read (its tokens would be refused); a store named by DATABASE_URL is made on purpose.
        raise SystemExit(
            f"aijobs users: there is no job store at {settings.sqlite_path}. Start the server once (`scripts/dev`, "
            "or the Procfile's web), which makes it, or set AIJOBS_DATA_DIR (or DATABASE_URL) to the store your "
            "server uses."
        )
    from .store import StoreOpenError

    try:
        return asyncio.run(_users(args, settings))
    except StoreOpenError as exc:
        raise SystemExit(f"aijobs users: {exc}") from None


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting as this environment sets it (what web, worker and dev would run with), beside its default."""
    settings = _settings()
    values = {f.metadata["env"]: (f, getattr(settings, f.name)) for f in fields(Settings)}
    rows = []
    for env, default, doc in settings_table():
        f, value = values[env]
        if isinstance(value, tuple):
            value = ",".join(value)
        shown = "(unset)" if value is None or value == "" else str(value)
        if f.metadata.get("secret") and value:
            shown = "*** (set)"
        elif env == "REDIS_URL" and value:
            shown = mask_redis_url(shown)  # a password of Redis's or the Sentinels'
        elif env == "DATABASE_URL":
            shown = settings.database_url_shown
        note = f"   [set in the environment; default: {default or '(unset)'}]" if os.environ.get(env) else ""
        rows.append((env, shown, doc + note))
    width = max(len(r[0]) for r in rows)
    for env, shown, doc in rows:
        print(f"{env:<{width}}  {shown:<28}  {doc}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 3 (argparse's own 2 is `aijobs submit --watch`'s "cancelled or expired")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="aijobs", description="Slow AI requests as background jobs with live progress.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run web + worker on embedded defaults").set_defaults(fn=cmd_dev)
    sub.add_parser("web", help="run the web process (REDIS_URL required)").set_defaults(fn=cmd_web)
    w = sub.add_parser("worker", help="run a worker process (REDIS_URL required)")
    w.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    w.set_defaults(fn=cmd_worker)
    sub.add_parser(
        "migrate", help="apply the job store's pending schema migrations (before starting a new release)"
    ).set_defaults(fn=cmd_migrate)
    st = sub.add_parser("store", help="move a store: copy a SQLite store into a migrated PostgreSQL one")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    cp = st_sub.add_parser(
        "copy", help="copy every row of a SQLite store into PostgreSQL (resumable: run it again after an interruption)"
    )
    cp.add_argument("source", help="sqlite:///PATH of the store to copy from (read only)")
    cp.add_argument("destination", help="postgresql://… of a store `aijobs migrate` has prepared")
    cp.add_argument("--batch-size", type=int, default=500, help="rows per transaction (default 500)")
    cp.set_defaults(fn=cmd_store_copy)
    sub.add_parser("settings", help="list every setting with its default").set_defaults(fn=cmd_settings)
    u = sub.add_parser(
        "users", help="create a user (prints its API token once), revoke its token, make it an operator, or list users"
    )
    u.add_argument("action", choices=["create", "revoke", "operator", "list"])
    u.add_argument("name", nargs="?", help="the user's name (create, revoke, operator)")
    u.add_argument("--new-token", action="store_true", help="revoke: issue a new token and print it once")
    u.add_argument("--operator", action="store_true", help="create: the user may open /admin, the operator page")
    u.add_argument("--off", action="store_true", help="operator: take the operator role away instead")
    u.set_defaults(fn=cmd_users)
    add_client_commands(sub)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
