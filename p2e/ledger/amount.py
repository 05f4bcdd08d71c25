"""Amounts: fixed-scale decimals kept as integers of minor units. No float ever holds money.

Daml's `Decimal` is `Numeric 10`: ten decimal places. p2e keeps an amount as the integer count
of 10^-10 units ("minor units"), so `12.5` is `125_000_000_000`, and converts to text or to
`decimal.Decimal` only at the edges (CLI, tools, YAML, the Canton backend).

The largest amount, and the largest supply a ledger may ever mint, is 100,000,000 units
(10^18 minor units): every balance and every running total then stays below 2^63, the range of
Redis integers, so the embedded ledger's arithmetic is exact and can never overflow.

Two kinds of input, kept apart on purpose:
- what people and models write ("12.5", `Decimal("12.5")`, `12`) means *units*: `parse_amount`;
- the Python API's `amount: int` means *minor units*: `check_minor`. `units("12.5")` converts.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from p2e.errors import InvalidArgument

SCALE = 10
"""Decimal places, as Daml's `Decimal` (`Numeric 10`)."""
UNIT = 10**SCALE
"""Minor units in one unit."""
MAX_UNITS = 10**8
MAX_AMOUNT = MAX_UNITS * UNIT
"""The largest amount (and the largest supply): 100,000,000 units, 10^18 minor units < 2^63."""
MAX_TEXT = 64
"""Longer amount text is refused before parsing (an enormous string is not an amount)."""

_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?", re.ASCII)
_EXAMPLE = "write digits with an optional '.' and up to 10 decimals, e.g. '12.5'"


def _bad(what: str, value: object, why: str) -> InvalidArgument:
    shown = repr(value)  # a model may send a huge list: quote the start of it
    return InvalidArgument(f"{what} {shown if len(shown) <= 60 else shown[:57] + '...'} {why}")


def parse_amount(value: object, *, what: str = "amount", allow_zero: bool = False) -> int:
    """Minor units from what a person or a model wrote: text, `Decimal` or `int`, in *units*.

    Refused, each with a message saying what to write instead: floats (they cannot hold most
    decimals exactly), booleans, negative numbers, zero (unless `allow_zero`), NaN, infinity,
    exponents, more than 10 decimal places, anything above `MAX_UNITS`, and text with anything
    but the number in it (spaces or a newline around it too: the amount is read exactly as written).
    """
    if isinstance(value, bool) or value is None:
        raise _bad(what, value, f"is not an amount; {_EXAMPLE}")
    if isinstance(value, float):
        raise _bad(
            what,
            value,
            "is a float, which cannot hold most decimals exactly; pass the amount as text "
            f"(e.g. '{value!r}' in quotes) or as a decimal.Decimal",
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        number = _parse_text(value, what)
    else:
        raise _bad(what, value, f"is a {type(value).__name__}, not an amount; {_EXAMPLE}")
    return _to_minor(number, value, what, allow_zero)


def _parse_text(text: str, what: str) -> Decimal:
    s = text
    if len(s) > MAX_TEXT:
        raise _bad(what, text[:20] + "...", f"is {len(s)} characters long; the largest amount is {MAX_UNITS}")
    if not _NUMBER.fullmatch(s):
        low = s.lower()
        if s != s.strip() and _NUMBER.fullmatch(s.strip()):
            why = f"has spaces around it; write the amount alone, e.g. {s.strip()!r}"
        elif low.lstrip("+-") in ("nan", "snan", "inf", "infinity"):
            why = "is not a number; an amount is a positive decimal"
        elif s.startswith("-"):
            why = "is negative; an amount must be more than zero (to take money back, pay the other way)"
        elif "e" in low and any(c.isdigit() for c in s):
            why = "uses an exponent; write the number out in full, e.g. '1500' rather than '1.5e3'"
        elif "," in s or "_" in s or " " in s:
            why = "has separators; use '.' for decimals and no thousands separators, e.g. '1500.25'"
        else:
            why = f"is not a decimal amount; {_EXAMPLE}"
        raise _bad(what, text, why)
    return Decimal(s)


def _to_minor(number: Decimal, shown: object, what: str, allow_zero: bool) -> int:
    if not number.is_finite():
        raise _bad(what, shown, "is not a number; an amount is a positive decimal")
    if number < 0:
        raise _bad(what, shown, "is negative; an amount must be more than zero")
    if number > MAX_UNITS:
        raise _bad(what, shown, f"is too large; the largest amount is {MAX_UNITS} units")
    try:
        scaled = number.scaleb(SCALE, context=decimal.Context(prec=60))
    except decimal.DecimalException as e:  # pragma: no cover - bounded above, cannot overflow
        raise _bad(what, shown, f"cannot be scaled ({e})") from None
    if scaled != scaled.to_integral_value():
        raise _bad(
            what,
            shown,
            f"has more than {SCALE} decimal places (the smallest amount is 0.{'0' * (SCALE - 1)}1); round it",
        )
    minor = int(scaled)
    if minor == 0 and not allow_zero:
        raise _bad(what, shown, "is zero; an amount must be more than zero")
    return minor


def units(value: str | Decimal | int) -> int:
    """Minor units of an amount in units: `units("12.5") == 125_000_000_000`."""
    return parse_amount(value)


def check_minor(value: object, what: str = "amount", allow_zero: bool = False) -> int:
    """An amount given to the Python API: an `int` of minor units, positive, at most `MAX_AMOUNT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"{what} {value!r} must be an int of minor units (10^-{SCALE}); "
            "convert text with p2e.ledger.units('12.5')"
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidArgument(f"{what} {format_amount(value)} must be more than zero")
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"{what} {format_amount(value)} is too large; the largest is {MAX_UNITS} units")
    return value


def format_amount(minor: int, signed: bool = False) -> str:
    """Text for minor units, shortest exact form: 125_000_000_000 -> "12.5"; `signed` adds "+"."""
    sign = "-" if minor < 0 else ("+" if signed and minor > 0 else "")
    whole, frac = divmod(abs(minor), UNIT)
    text = str(whole)
    if frac:
        text += "." + str(frac).rjust(SCALE, "0").rstrip("0")
    return sign + text


def to_decimal(minor: int) -> Decimal:
    """The exact `Decimal` of minor units (what Daml's `Decimal` fields receive)."""
    return Decimal(minor).scaleb(-SCALE)


def from_decimal(value: Decimal | str, what: str = "amount") -> int:
    """Minor units of a `Decimal` read back from a ledger (zero and negatives allowed: balances,
    deltas); more than 10 decimal places is an error."""
    number = Decimal(value)
    if not number.is_finite():
        raise InvalidArgument(f"{what} {value!r} is not a number")
    scaled = number.scaleb(SCALE, context=decimal.Context(prec=60))
    if scaled != scaled.to_integral_value():
        raise InvalidArgument(f"{what} {value!r} has more than {SCALE} decimal places")
    return int(scaled)


def split(amount: int, n: int) -> list[int]:
    """`amount` in `n` shares that differ by at most one minor unit and add up exactly; the first
    shares take the remainder (deterministic, so a payout computed twice is the same)."""
    if n < 1:
        raise InvalidArgument("cannot split an amount among nobody")
    base, rest = divmod(amount, n)
    return [base + (1 if i < rest else 0) for i in range(n)]


def _units_field(value: Any) -> int:
    """Validator of `Amount` fields: units as text, `Decimal` or `int`; zero allowed."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"{value} is negative; an amount must be zero or more")
    try:
        return parse_amount(value, allow_zero=True)
    except InvalidArgument as e:
        raise ValueError(str(e).removeprefix("amount ")) from None


def _tool_units(value: Any) -> int:
    """Validator of `ToolAmount`: sees the JSON value the model sent, before any coercion."""
    try:
        return parse_amount(value)
    except InvalidArgument as e:
        raise PydanticCustomError("amount", str(e).removeprefix("amount ")) from None  # after "amount: "


ToolAmount = Annotated[
    int,
    BeforeValidator(_tool_units),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
"""A tool argument that moves money, in *units*: a JSON integer (`5`) or a decimal string (`"12.5"`),
held as minor units. Checked as the model sent it, so `true` or `3.0` is refused rather than
read as 1 or 3 (a plain `int | str` field would coerce them), and the model is told why."""


Amount = Annotated[int, BeforeValidator(_units_field), PlainSerializer(format_amount, return_type=str)]
"""A config field (policies, a rollout's `ledger:`) given in *units* like the YAML it comes from:
`100`, `"12.5"`, `Decimal("12.5")`, also from Python (`SpendingPolicy(max_per_transfer=10)` is 10
units, not 10 minor units). Held as minor units; written back as units text, so a model dumped
to JSON and read back keeps its value."""
