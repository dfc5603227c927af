"""Pick the provider from explicit settings, so config loading stays in one place and tests need no env."""

from __future__ import annotations

import httpx

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
    return SimulatedProvider(delay=sim_delay, default_model=model if model.startswith("sim") else "sim-1")
