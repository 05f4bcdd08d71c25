"""Scenario callables for tests/test_scenarios_sources.py: a spec names them as
`scenarios_for_tests:weather` (the tests directory is on the path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from p2e.rollouts.spec import Scenario

WEATHER = [
    {"id": "paris", "message": "What is the weather in Paris?", "reference": "snow", "metadata": {"c": "1"}},
    {"id": "lima", "message": "What is the weather in Lima?", "reference": "sunny", "metadata": {"c": "23"}},
    {"id": "tokyo", "message": "What is the weather in Tokyo?", "reference": "fog", "metadata": {"c": "9"}},
]


def weather(only: list[str] | None = None) -> Iterator[Any]:
    """The first as a Scenario model, the others as dicts: both are accepted."""
    for i, s in enumerate(WEATHER):
        if only is None or s["id"] in only:
            yield Scenario.model_validate(s) if i == 0 else s


def broken() -> list[dict[str, Any]]:
    raise RuntimeError("the dataset server is down")


def fails_midway() -> Iterator[dict[str, Any]]:
    yield WEATHER[0]
    raise ConnectionError("lost the connection")


def a_number() -> int:
    return 42


def odd_items() -> list[Any]:
    return [WEATHER[0], "just text"]


NOT_CALLABLE = ["a list"]
