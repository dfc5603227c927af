"""The bench's user: made in a store file as `aijobs users create` would, its token sent with every request."""

from __future__ import annotations

from pathlib import Path


async def make_token(db_path: Path, name: str = "bench") -> str:
    from service.config import Settings
    from service.store import open_store
    from service.store.users import UserStore

    store = open_store(Settings(database_url=f"sqlite:///{db_path}"))
    await store.open()
    try:
        _, token = await UserStore(store).create(name)  # type: ignore[arg-type]
    finally:
        await store.close()
    return token
