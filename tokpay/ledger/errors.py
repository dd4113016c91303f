"""Stable rejection codes and the exception that carries them.

Every refusal anywhere in TokPay is a :class:`LedgerError` with a code from
:class:`ErrorCode`; the HTTP layer turns it into an RFC 9457 problem body. Codes
are part of the public contract: add new ones, never rename old ones.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_BODY = "invalid_body"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_ACCOUNT_ID = "invalid_account_id"
    INVALID_TRANSFER_ID = "invalid_transfer_id"
    INVALID_CURRENCY = "invalid_currency"
    INVALID_OWNER = "invalid_owner"
    INVALID_LIMIT = "invalid_limit"
    INVALID_CURSOR = "invalid_cursor"
    MEMO_TOO_LONG = "memo_too_long"
    INVALID_MEMO = "invalid_memo"
    NO_CREDITS = "no_credits"
    TOO_MANY_LEGS = "too_many_legs"
    TOO_MANY_IDS = "too_many_ids"
    DUPLICATE_CREDIT_ACCOUNT = "duplicate_credit_account"
    SELF_TRANSFER = "self_transfer"
    SYSTEM_ACCOUNT_FORBIDDEN = "system_account_forbidden"
    ACCOUNT_NOT_FOUND = "account_not_found"
    TRANSFER_NOT_FOUND = "transfer_not_found"
    CURRENCY_MISMATCH = "currency_mismatch"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    BALANCE_LIMIT_EXCEEDED = "balance_limit_exceeded"
    TRANSFER_ID_CONFLICT = "transfer_id_conflict"
    ACCOUNT_ID_CONFLICT = "account_id_conflict"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    OVERLOADED = "overloaded"
    SHARD_FULL = "shard_full"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_BODY: 422,
    ErrorCode.INVALID_AMOUNT: 422,
    ErrorCode.INVALID_ACCOUNT_ID: 422,
    ErrorCode.INVALID_TRANSFER_ID: 422,
    ErrorCode.INVALID_CURRENCY: 422,
    ErrorCode.INVALID_OWNER: 422,
    ErrorCode.INVALID_LIMIT: 422,
    ErrorCode.INVALID_CURSOR: 422,
    ErrorCode.MEMO_TOO_LONG: 422,
    ErrorCode.INVALID_MEMO: 422,
    ErrorCode.NO_CREDITS: 422,
    ErrorCode.TOO_MANY_LEGS: 422,
    ErrorCode.TOO_MANY_IDS: 422,
    ErrorCode.DUPLICATE_CREDIT_ACCOUNT: 422,
    ErrorCode.SELF_TRANSFER: 422,
    ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN: 403,
    ErrorCode.ACCOUNT_NOT_FOUND: 404,
    ErrorCode.TRANSFER_NOT_FOUND: 404,
    ErrorCode.CURRENCY_MISMATCH: 422,
    ErrorCode.INSUFFICIENT_FUNDS: 422,
    ErrorCode.BALANCE_LIMIT_EXCEEDED: 422,
    ErrorCode.TRANSFER_ID_CONFLICT: 409,
    ErrorCode.ACCOUNT_ID_CONFLICT: 409,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.SHARD_FULL: 507,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}


class LedgerError(Exception):
    """A refusal with a stable code; nothing was changed by the operation that raised it."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


class InvariantViolation(RuntimeError):
    """A state that must never exist (sum not zero, sequence gap, overdrawn user account).

    Raised by :func:`check`; the owner of the state must stop rather than carry on.
    """


def check(condition: bool, message: str) -> None:
    """Always-on invariant check (``assert`` disappears under ``python -O``)."""
    if not condition:
        raise InvariantViolation(message)
