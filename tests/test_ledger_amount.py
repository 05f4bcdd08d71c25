"""Amounts (p2e.ledger.amount): strict parsing of what people and models write, exact formatting,
fixed-scale arithmetic. Pure: no store."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from p2e.errors import InvalidArgument
from p2e.ledger.amount import (
    MAX_AMOUNT,
    MAX_UNITS,
    UNIT,
    Amount,
    check_minor,
    format_amount,
    from_decimal,
    parse_amount,
    split,
    to_decimal,
    units,
)


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("12.5", 125_000_000_000),
        ("0.0000000001", 1),
        ("1", UNIT),
        ("100000000", MAX_AMOUNT),
        ("1.50000000000", 15 * UNIT // 10),  # trailing zeros past 10 places change nothing
        (Decimal("3.25"), 325 * UNIT // 100),
        (42, 42 * UNIT),
    ],
)
def test_good_amounts(text: object, minor: int) -> None:
    assert parse_amount(text) == minor


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("-5", "negative"),
        ("-0.1", "negative"),
        (-3, "negative"),
        (Decimal("-2"), "negative"),
        ("0", "zero"),
        ("0.00", "zero"),
        (0, "zero"),
        ("NaN", "not a number"),
        ("nan", "not a number"),
        (Decimal("NaN"), "not a number"),
        ("inf", "not a number"),
        ("-Infinity", "not a number"),
        (Decimal("Infinity"), "not a number"),
        ("0.00000000001", "more than 10 decimal places"),
        ("1.12345678901", "more than 10 decimal places"),
        (Decimal("1E-11"), "more than 10 decimal places"),
        ("100000000.0000000001", "too large"),
        ("1" + "0" * 40, "too large"),
        ("1" + "0" * 100, "characters long"),
        (10**30, "too large"),
        (Decimal("1e30"), "too large"),
        ("1e5", "exponent"),
        ("1,000", "separators"),
        ("1_000", "separators"),
        (" 7 ", "has spaces around it; write the amount alone, e.g. '7'"),  # read as written, never trimmed
        ("7\n", "has spaces around it"),
        ("twelve", "not a decimal amount"),
        ("", "not a decimal amount"),
        ("1.", "not a decimal amount"),
        (".5", "not a decimal amount"),
        ("\uff11\uff12", "not a decimal amount"),  # full-width digits are not ASCII digits
        (12.5, "float"),
        (0.1, "float"),
        (float("nan"), "float"),
        (True, "not an amount"),
        (None, "not an amount"),
        ([1], "not an amount"),
    ],
)
def test_bad_amounts_name_the_problem(value: object, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as e:
        parse_amount(value)
    assert "amount" in str(e.value)


def test_zero_is_allowed_where_asked_and_the_message_names_the_input() -> None:
    assert parse_amount("0", allow_zero=True) == 0
    with pytest.raises(InvalidArgument, match=r"--balance '-1' is negative"):
        parse_amount("-1", what="--balance", allow_zero=True)


def test_units_of_the_smallest_and_largest_amounts() -> None:
    assert units("0.0000000001") == 1
    assert units(MAX_UNITS) == MAX_AMOUNT
    assert MAX_AMOUNT < 2**63  # every balance fits a Redis integer


@pytest.mark.parametrize("bad", [0, -1, MAX_AMOUNT + 1, 1.5, "5", True, None, Decimal(5)])
def test_check_minor_takes_only_positive_ints_of_minor_units(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        check_minor(bad)
    assert check_minor(MAX_AMOUNT) == MAX_AMOUNT
    assert check_minor(0, allow_zero=True) == 0


@pytest.mark.parametrize(
    ("minor", "text"),
    [(0, "0"), (1, "0.0000000001"), (UNIT, "1"), (125_000_000_000, "12.5"), (-UNIT // 4, "-0.25")],
)
def test_format_amount(minor: int, text: str) -> None:
    assert format_amount(minor) == text


def test_format_signed() -> None:
    assert format_amount(UNIT, signed=True) == "+1"
    assert format_amount(-UNIT, signed=True) == "-1"
    assert format_amount(0, signed=True) == "0"


@given(st.integers(min_value=1, max_value=MAX_AMOUNT))
def test_text_and_decimal_round_trips_are_exact(minor: int) -> None:
    assert parse_amount(format_amount(minor)) == minor
    assert from_decimal(to_decimal(minor)) == minor
    assert parse_amount(to_decimal(minor)) == minor


@given(st.integers(min_value=0, max_value=MAX_AMOUNT), st.integers(min_value=1, max_value=50))
def test_split_adds_up_and_is_fair(amount: int, n: int) -> None:
    shares = split(amount, n)
    assert sum(shares) == amount and len(shares) == n
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)  # the remainder goes to the first


def test_split_among_nobody_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        split(10, 0)


class Config(BaseModel):
    balance: Amount = 0
    cap: Amount | None = None


def test_amount_fields_read_units_and_survive_a_json_round_trip() -> None:
    c = Config.model_validate({"balance": "12.5", "cap": 100})
    assert c.balance == 125_000_000_000 and c.cap == 100 * UNIT
    dumped = c.model_dump_json()
    assert dumped == '{"balance":"12.5","cap":"100"}'
    assert Config.model_validate_json(dumped) == c


@pytest.mark.parametrize("bad", [-1, "-1", 1.5, "1e3", "NaN", "0.00000000001"])
def test_amount_fields_refuse_bad_input_with_a_field_error(bad: object) -> None:
    with pytest.raises(ValidationError) as e:
        Config.model_validate({"balance": bad})
    assert e.value.errors()[0]["loc"] == ("balance",)
