"""What a model call cost, in USD.

Prices come from `genai-prices` (Pydantic's maintained price data, shipped as a snapshot with
the package: no network), for the provider the call went to. Overrides from the provider
settings (`providers.openai.prices: {model-prefix: [input, output]}` in USD per 1M tokens) win,
so a local model, a negotiated price or a model newer than the snapshot is priced as the user
says. A model neither knows costs 0.0, and a warning names it once per process, so a $0 total
never passes silently.

Overrides match by the longest prefix that ends at a `-`, `:` or `@` boundary, so an override
for `gpt-4o-mini` prices `gpt-4o-mini-2024-07-18` and not `gpt-4o`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from genai_prices import Usage, calc_price

from p2e.errors import InvalidArgument

log = logging.getLogger("p2e.pricing")

_BOUNDARY = "-:@"
_warned: set[str] = set()
_warned_lock = threading.Lock()


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    output: float


def _as_price(name: str, value: Any) -> Price:
    """Settings may give a price as `[input, output]` or `{input: .., output: ..}`."""
    try:
        if isinstance(value, Price):
            return value
        if isinstance(value, Mapping):
            price = Price(float(value["input"]), float(value["output"]))
        elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            price = Price(float(value[0]), float(value[1]))
        else:
            price = None
        if price is not None and all(0 <= p < float("inf") for p in price):
            return price
    except (KeyError, TypeError, ValueError):
        pass
    raise InvalidArgument(
        f"price for model {name!r} must be [input, output] or {{input: .., output: ..}} "
        f"in USD per 1M tokens (finite, not negative), not {value!r}"
    )


def price_table(extra: Mapping[str, Any] | None = None) -> dict[str, Price]:
    """The overrides from settings, checked (a bad price fails at startup, not on a reply)."""
    return {name.lower(): _as_price(name, value) for name, value in (extra or {}).items()}


def _longest_prefix(name: str, table: Mapping[str, Price]) -> Price | None:
    best: str | None = None
    for key in table:
        matches = name == key or (name.startswith(key) and name[len(key)] in _BOUNDARY)
        if matches and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else None


def _names(model: str) -> list[str]:
    """`model` as given, then without its `provider/` or `org/` path (routers name models so)."""
    name = model.lower()
    return [name, name.rsplit("/", 1)[1]] if "/" in name else [name]


def override_for(model: str, extra: Mapping[str, Any] | None) -> Price | None:
    """The user's price for `model`, if the settings give one."""
    table = price_table(extra)
    return next((p for n in _names(model) if (p := _longest_prefix(n, table)) is not None), None)


def _listed(model: str, prompt_tokens: int, completion_tokens: int, provider: str) -> float | None:
    for name in _names(model):
        try:
            calc = calc_price(
                Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens), name, provider_id=provider
            )
        except LookupError:
            continue
        return float(calc.total_price)
    return None


def cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    extra: Mapping[str, Any] | None = None,
    provider: str = "openai",
    served: str | None = None,
) -> float:
    """USD for one call to `model` (or, failing that, the `served` name the server answered
    with, e.g. a dated snapshot); 0.0, with a warning once per model, when nothing prices it."""
    for name in (model, served) if served and served != model else (model,):
        price = override_for(name, extra)
        if price is not None:
            return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
    for name in (model, served) if served and served != model else (model,):
        listed = _listed(name, prompt_tokens, completion_tokens, provider)
        if listed is not None:
            return listed
    _warn_unpriced(model, provider)
    return 0.0


def _warn_unpriced(model: str, provider: str) -> None:
    with _warned_lock:
        if model in _warned:
            return
        _warned.add(model)
    log.warning(
        "no price known for model %r (provider %s): its calls are counted at $0. Give one in the agents "
        "file: providers.%s.prices: {%r: [input, output]} (USD per 1M tokens)",
        model,
        provider,
        provider,
        model,
    )
