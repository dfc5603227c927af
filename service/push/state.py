"""What push needs of the web process: the parts `api.state.AppState` holds, as a Protocol.

So the dependency runs one way (api → push): a WebSocket session and a multi-job watch take any object with these
parts, and the web app passes its AppState.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Settings
from ..events import EventLog
from ..jobs import JobService
from ..store.base import JobStore
from .gateway import Gateway


class PushState(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> JobStore: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def jobs(self) -> JobService: ...

    @property
    def gateway(self) -> Gateway: ...
