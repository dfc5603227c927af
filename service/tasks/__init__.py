"""Job types. `default_registry()` holds the built-in ones; an app may build its own registry."""

from __future__ import annotations

from .registry import TaskRegistry, TaskSpec, UnknownTaskType


def default_registry() -> TaskRegistry:
    from . import chat, image, response, summary, titles

    registry = TaskRegistry()
    for module in (titles, summary, chat, image, response):
        module.register(registry)
    return registry


__all__ = ["TaskRegistry", "TaskSpec", "UnknownTaskType", "default_registry"]
