"""Typed dollar amounts become integer cents, never through a float."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokpay.web.money import AmountError, format_cents, parse_cents

BIG = 10**12


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("12.5", 1250),
        ("12.50", 1250),
        ("0.01", 1),
        ("$3", 300),
        (" 1,000.00 ", 100000),
        ("1234567", 123456700),
        ("0.1", 10),
    ],
)
def test_parses_dollars_and_cents(text: str, cents: int) -> None:
    assert parse_cents(text, maximum=BIG) == cents


@pytest.mark.parametrize(
    "text", ["", "  ", "0", "0.00", "-1", "1e3", "1.234", "abc", "1,00", "1.", ".5", "NaN", "1_000"]
)
def test_refuses_what_is_not_a_positive_amount(text: str) -> None:
    with pytest.raises(AmountError):
        parse_cents(text, maximum=BIG)


def test_refuses_above_the_limit() -> None:
    assert parse_cents("100.00", maximum=10000) == 10000
    with pytest.raises(AmountError, match=r"\$100\.00"):
        parse_cents("100.01", maximum=10000)


@given(st.integers(min_value=1, max_value=BIG))
def test_format_and_parse_round_trip(cents: int) -> None:
    assert parse_cents(format_cents(cents), maximum=BIG) == cents


def test_formats_negative_amounts() -> None:
    assert format_cents(-1234) == "-$12.34"
    assert format_cents(0) == "$0.00"
