"""What a model call cost, from a price table in USD per 1M input and output tokens.

Prices change, and this table is a snapshot of OpenAI's list prices (standard tier, no batch or
cached-input discounts) that will drift out of date. Users add or correct entries through the
provider settings (`providers.openai.prices`), which take precedence over the built-in table.
Models the table does not know (local vLLM, Ollama, llama.cpp models) cost 0.0.

Lookup is by the longest matching prefix, so a dated snapshot such as
`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`. A prefix only matches up to a `-`, `:` or
`@` boundary, so `gpt-4.5-preview` is not mistaken for `gpt-4` and `gpt-4o` not for `gpt-4`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from p2e.errors import InvalidArgument


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    output: float


PRICES: dict[str, Price] = {
    # GPT-5 family
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    # GPT-4.1 family
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    # GPT-4o family
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "chatgpt-4o-latest": Price(5.00, 15.00),
    # reasoning models
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    # older models
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4": Price(30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
}

_BOUNDARY = "-:@"


def _as_price(name: str, value: Any) -> Price:
    """Settings may give a price as `[input, output]` or `{input: .., output: ..}`."""
    try:
        if isinstance(value, Price):
            return value
        if isinstance(value, Mapping):
            return Price(float(value["input"]), float(value["output"]))
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return Price(float(value[0]), float(value[1]))
    except (KeyError, TypeError, ValueError):
        pass
    raise InvalidArgument(
        f"price for model {name!r} must be [input, output] or {{input: .., output: ..}} "
        f"in USD per 1M tokens, not {value!r}"
    )


def price_table(extra: Mapping[str, Any] | None = None) -> dict[str, Price]:
    """The built-in table with `extra` entries (from settings) added or overriding."""
    table = dict(PRICES)
    for name, value in (extra or {}).items():
        table[name.lower()] = _as_price(name, value)
    return table


def _longest_prefix(name: str, table: Mapping[str, Price]) -> Price | None:
    best: str | None = None
    for key in table:
        matches = name == key or (name.startswith(key) and name[len(key)] in _BOUNDARY)
        if matches and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else None


def price_for(model: str, extra: Mapping[str, Any] | None = None) -> Price | None:
    """The price of `model` (bare, or with a `provider/` or `org/` path), or None if unknown."""
    table = price_table(extra) if extra else PRICES
    name = model.lower()
    found = _longest_prefix(name, table)
    if found is None and "/" in name:
        found = _longest_prefix(name.rsplit("/", 1)[1], table)
    return found


def cost(
    model: str, prompt_tokens: int, completion_tokens: int, extra: Mapping[str, Any] | None = None
) -> float:
    """USD for one call; 0.0 for models the table does not know (e.g. local ones)."""
    price = price_for(model, extra)
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
