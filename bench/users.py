"""The bench's user: made in a store as `aijobs users create` would, its token sent with every request."""

from __future__ import annotations

from pathlib import Path


async def make_token(db_path: Path | None = None, name: str = "bench", *, database_url: str | None = None) -> str:
    """In the SQLite file `db_path`, or the store `database_url` names."""
    from service.config import Settings
    from service.store import open_users

    async with open_users(Settings(database_url=database_url or f"sqlite:///{db_path}")) as users:
        _, token = await users.create(name)
    return token
