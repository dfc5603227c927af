"""Job types: one decorated async function each, with a typed input, a timeout and a retry policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..schema import parse
from .context import TaskContext

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

In = TypeVar("In", bound="DataclassInstance")  # a task's input is a dataclass: schema.parse validates into it
TaskFn = Callable[[TaskContext, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class TaskSpec(Generic[In]):
    name: str
    fn: TaskFn
    input_type: type[In]
    description: str
    timeout: float | None = None  # seconds per attempt; None: the worker's JOB_TIMEOUT
    max_attempts: int | None = None  # None: the worker's JOB_MAX_ATTEMPTS
    poll_interval: float = 2.0  # what a polling client is told to wait between polls
    max_wait: float = 300.0  # seconds a job may wait in the queue before it expires
    typical_seconds: float = 5.0  # an ETA before any run of this type has been measured
    models: tuple[str, ...] = ()  # fallback chain tried in order; () = AI_MODEL then AI_FALLBACK_MODELS
    kind: str = "chat"  # which provider call it makes: "chat" types share the configured chat model chain
    # Identical calls in flight share one upstream call (never with a user's own key): for types whose answer to the
    # same input is interchangeable between users. Their results are also cached for `cache_ttl` seconds (None:
    # RESULT_CACHE_SECONDS; 0: no cache).
    coalesce: bool = False
    cache_ttl: float | None = None

    def parse_input(self, data: Any) -> In:
        return parse(self.input_type, data)


class UnknownTaskType(KeyError):
    pass


class TaskRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec[Any]] = {}

    def task(
        self,
        name: str,
        *,
        input: type[Any],
        timeout: float | None = None,
        max_attempts: int | None = None,
        poll_interval: float = 2.0,
        max_wait: float = 300.0,
        typical_seconds: float = 5.0,
        models: tuple[str, ...] = (),
        kind: str = "chat",
        coalesce: bool = False,
        cache_ttl: float | None = None,
    ) -> Callable[[TaskFn], TaskFn]:
        def register(fn: TaskFn) -> TaskFn:
            if name in self._specs:
                raise ValueError(f"job type {name!r} is registered twice")
            self._specs[name] = TaskSpec(
                name=name,
                fn=fn,
                input_type=input,
                description=(fn.__doc__ or name).strip().splitlines()[0],
                timeout=timeout,
                max_attempts=max_attempts,
                poll_interval=poll_interval,
                max_wait=max_wait,
                typical_seconds=typical_seconds,
                models=models,
                kind=kind,
                coalesce=coalesce,
                cache_ttl=cache_ttl,
            )
            return fn

        return register

    def get(self, name: str) -> TaskSpec[Any]:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTaskType(name) from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self) -> Iterator[TaskSpec[Any]]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs
