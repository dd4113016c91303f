"""RFC 9457 problem bodies: how every refusal of the API is written.

A refusal anywhere below is a ``LedgerError``; ``problem`` renders it with the
status its code maps to. The API key guard, which refuses before any ledger
code runs, writes its 401 through ``problem_body`` so all problems look alike.
"""

from __future__ import annotations

import msgspec

from tokpay.ledger.errors import HTTP_STATUS, LedgerError

JSON_MEDIA_TYPE = "application/json"
PROBLEM_MEDIA_TYPE = "application/problem+json"

Reply = tuple[int, bytes]
"""What a handler answers: the status and the encoded body (JSON or a problem)."""

_json = msgspec.json.Encoder()


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, with TokPay's stable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str = ""
    instance: str | None = None


def media_type_of(status: int) -> str:
    """Successes are JSON; every error status carries a problem body."""
    return JSON_MEDIA_TYPE if status < 400 else PROBLEM_MEDIA_TYPE


def problem_body(code: str, status: int, detail: str, instance: str | None) -> bytes:
    return _json.encode(
        Problem(
            type=f"https://tokpay.dev/problems/{code}",
            title=code.replace("_", " ").capitalize(),
            status=status,
            code=code,
            detail=detail,
            instance=instance,
        )
    )


NO_STORE = (("cache-control", "no-store"), ("x-content-type-options", "nosniff"))
"""On every API reply: balances and transfers are never kept by a cache, and a reply is
never read as another content type than the one it says."""

CLOSE_AFTER = frozenset({413})
"""Statuses answered before the request body was read to its end: the rest of the body is
still on the connection, so it cannot carry another request. The reply says
``Connection: close`` and clients open a new one (reusing it failed now and then)."""


def problem(error: LedgerError, instance: str | None = None) -> Reply:
    status = HTTP_STATUS[error.code]
    return status, problem_body(error.code, status, error.detail, instance)
