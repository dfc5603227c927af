"""The bench's user: made in a store file as `aijobs users create` would, its token sent with every request."""

from __future__ import annotations

from pathlib import Path


async def make_token(db_path: Path, name: str = "bench") -> str:
    from service.config import Settings
    from service.store import open_users

    async with open_users(Settings(database_url=f"sqlite:///{db_path}")) as users:
        _, token = await users.create(name)
    return token
