"""Dollar amounts typed by people, parsed into integer cents without floats."""

from __future__ import annotations

import re
from typing import Final

MAX_TOPUP_CENTS: Final = 1_000_000
"""One top-up adds at most $10,000.00."""
MAX_PAYMENT_CENTS: Final = 10_000_000
"""One recipient receives at most $100,000.00 per payment."""

# ASCII digits only: Python's \d also matches fullwidth (U+FF11) and Arabic-Indic
# (U+0663) digits, which int() reads but a reader of the amount may not.
_AMOUNT = re.compile(
    r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,12})"
    r"(?:\.(?P<cents>[0-9]{1,2}))?"
)


class AmountError(ValueError):
    """A typed amount that is not a positive number of dollars and cents within limits."""


def parse_cents(text: str, *, maximum: int) -> int:
    """``"12.5"`` -> 1250; ``"$1,000"`` -> 100000. Refuses floats' spellings like ``1e3``."""
    cleaned = text.strip().removeprefix("$").strip()
    if not cleaned:
        raise AmountError("Enter an amount, for example 12.50.")
    match = _AMOUNT.fullmatch(cleaned)
    if match is None:
        raise AmountError("Enter dollars and cents like 12.50 (digits, at most two decimals).")
    whole = int(match["whole"].replace(",", ""))
    cents_text = match["cents"] or "0"
    cents = int(cents_text.ljust(2, "0"))
    amount = whole * 100 + cents
    if amount <= 0:
        raise AmountError("The amount must be more than $0.00.")
    if amount > maximum:
        raise AmountError(f"The amount can be at most {format_cents(maximum)}.")
    return amount


def format_cents(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}${whole:,}.{cents:02d}"
