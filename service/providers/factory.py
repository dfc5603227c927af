"""Pick the provider from explicit settings, so config loading stays in one place and tests need no env."""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from ..config import ProviderConfig
from .base import Provider
from .openai_compat import OpenAICompatProvider
from .simulated import SimulatedProvider

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def build_provider(
    *,
    base_url: str | None,
    api_key: str | None,
    model: str,
    image_model: str | None,
    sim_delay: float,
    client: httpx.AsyncClient | None = None,
) -> Provider:
    """A real HTTP provider once a base URL or key is configured, otherwise the offline simulator.

    A base URL alone is enough because local servers (Ollama, vLLM) usually need no key.
    """
    if base_url or api_key:
        return OpenAICompatProvider(
            base_url=base_url or DEFAULT_BASE_URL,
            api_key=api_key or None,
            default_model=model,
            image_model=image_model,
            client=client,
        )
    return SimulatedProvider(delay=sim_delay, default_model=chat_model_name(model=model, simulated=True))


def chat_model_name(*, model: str, simulated: bool) -> str:
    """The primary chat model as the provider built above names it: AI_MODEL, or the simulator's own model unless
    AI_MODEL names one of its (`sim-…`). Also what `GET /v1/models` lists first."""
    return model if not simulated or model.startswith("sim") else SimulatedProvider.DEFAULT_MODEL


def image_model_name(*, model: str, simulated: bool) -> str:
    return SimulatedProvider.IMAGE_MODEL if simulated else model


def build_chain_providers(
    primary: Provider,
    extras: Iterable[ProviderConfig],
    *,
    model: str,
    sim_delay: float,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Provider]:
    """Every provider a fallback chain may name: the primary (`openai` or `simulated`), the simulator, and
    AI_PROVIDERS' named OpenAI-compatible servers, each with its own server key."""
    providers: dict[str, Provider] = {primary.name: primary}
    if "simulated" not in providers:
        providers["simulated"] = SimulatedProvider(delay=sim_delay)
    for extra in extras:
        providers[extra.name] = OpenAICompatProvider(
            base_url=extra.base_url, api_key=extra.api_key, default_model=model, client=client, name=extra.name
        )
    return providers
