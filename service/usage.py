"""What a job cost: tokens from the provider's usage (estimated for the simulated one) times a price table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PriceTable:
    """USD per million prompt/completion tokens by model; a dated model name (`gpt-4o-mini-2024-07-18`) takes the
    price of its longest listed prefix; a model not listed costs None (unknown), never a made-up number."""

    def __init__(self, prices: Mapping[str, tuple[float, float]]) -> None:
        self.prices = prices  # Settings.prices: AI_PRICES parsed once
        # model -> its price as found: the prefix search walks the whole table, and every provider call asks it
        self._found: dict[str, tuple[float, float] | None] = {}

    def price(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        if model in self._found:
            return self._found[model]
        if model in self.prices:
            price: tuple[float, float] | None = self.prices[model]
        else:
            best = max((name for name in self.prices if model.startswith(name)), key=len, default=None)
            price = self.prices[best] if best else None
        if len(self._found) < 10_000:  # models are few; a bound all the same, as names come from providers
            self._found[model] = price
        return price

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000, 8)

    def job_cost(self, model: str | None, usage: dict[str, Any] | None) -> float | None:
        if not usage:
            return None
        return self.cost(model, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
