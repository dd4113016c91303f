"""Who a user deals with: recent recipients and payment requests, in the web app's SQLite file.

Recent recipients feed the autocomplete, the "first payment to this person" notice and
the look-alike check (``looks_like``: Unicode TS #39 skeletons from the confusables
data of ``confusable_homoglyphs``). Both tables are bounded per user; every call is
one short statement, run inline like the user directory's.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
import unicodedata
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confusable_homoglyphs import confusables

from tokpay.web.store import connect

MAX_CONTACTS: Final = 50
"""Recent recipients kept per user; the oldest go first."""
MAX_OPEN_REQUESTS: Final = 20
"""Open requests one user may have asked of others at a time."""
MAX_KEPT_REQUESTS: Final = 100
"""Requests kept per requester; the oldest settled ones are dropped beyond it."""
MAX_LISTED: Final = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    last_paid_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, email)
);
CREATE TABLE IF NOT EXISTS payment_requests (
    id TEXT PRIMARY KEY,
    requester_id TEXT NOT NULL,
    requester_email TEXT NOT NULL,
    payer_email TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    note TEXT NOT NULL,
    status TEXT NOT NULL,
    transfer_id TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_requests_payer ON payment_requests (payer_email, status);
CREATE INDEX IF NOT EXISTS payment_requests_requester ON payment_requests (requester_id);
"""
_REQUEST_COLUMNS = (
    "id, requester_id, requester_email, payer_email, amount, note, status, transfer_id, created_at"
)


@dataclass(frozen=True)
class PaymentRequest:
    id: str
    requester_id: str
    requester_email: str
    payer_email: str
    amount: int
    note: str
    status: str  # "open", "paid", "declined" or "cancelled"
    transfer_id: str
    created_at: int

    @property
    def pay_transfer_id(self) -> str:
        """The one transfer id that pays this request: paying twice pays once."""
        return f"pay_{self.id.removeprefix('req_')}"


class TooManyRequests(Exception):
    pass


def skeleton(text: str) -> str:
    """A TS #39 style skeleton: decompose, map each character to its prototype, casefold.

    The prototype of a character is the ASCII character the Unicode confusables data
    lists for it (Cyrillic small a, U+0430, -> ``a``), else the character itself.
    """
    out = []
    for char in unicodedata.normalize("NFD", text):
        if not char.isascii():
            for glyph in confusables.confusables_data.get(char, ()):
                if len(glyph["c"]) == 1 and glyph["c"].isascii():
                    char = glyph["c"]
                    break
        out.append(char)
    return unicodedata.normalize("NFD", "".join(out)).casefold()


def looks_like(email: str, known: list[str]) -> str | None:
    """The known address ``email`` is a look-alike of (same skeleton, other text), if any."""
    shape = skeleton(email)
    for other in known:
        if other != email and skeleton(other) == shape:
            return other
    return None


def unusual_letters(text: str) -> list[str]:
    """Each distinct non-ASCII character of ``text`` with its Unicode name, for warnings."""
    seen = dict.fromkeys(char for char in text if not char.isascii())
    return [f"{char}: {unicodedata.name(char, 'unnamed character').capitalize()}" for char in seen]


class PeopleStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    # Recent recipients -------------------------------------------------------------

    def contacts(self, user_id: str) -> list[str]:
        """The user's recent recipients, most recent first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT email FROM contacts WHERE user_id = ? ORDER BY last_paid_at DESC, email "
                "LIMIT ?",
                (user_id, MAX_CONTACTS),
            ).fetchall()
        return [email for (email,) in rows]

    def remember(self, user_id: str, emails: list[str]) -> None:
        now = time.time_ns()
        with self._connect() as db:
            db.executemany(
                "INSERT INTO contacts (user_id, email, last_paid_at) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, email) DO UPDATE SET last_paid_at = excluded.last_paid_at",
                [(user_id, email, now) for email in emails],
            )
            db.execute(
                "DELETE FROM contacts WHERE user_id = ? AND email NOT IN (SELECT email FROM "
                "contacts WHERE user_id = ? ORDER BY last_paid_at DESC LIMIT ?)",
                (user_id, user_id, MAX_CONTACTS),
            )

    # Payment requests ------------------------------------------------------------

    def ask(
        self, requester_id: str, requester_email: str, payer_email: str, amount: int, note: str
    ) -> PaymentRequest:
        request_id = f"req_{secrets.token_hex(12)}"
        with self._connect() as db:
            (open_count,) = db.execute(
                "SELECT count(*) FROM payment_requests WHERE requester_id = ? AND status = 'open'",
                (requester_id,),
            ).fetchone()
            if open_count >= MAX_OPEN_REQUESTS:
                raise TooManyRequests(
                    f"You have {MAX_OPEN_REQUESTS} open requests; cancel one or wait for "
                    "an answer before asking again."
                )
            db.execute(
                f"INSERT INTO payment_requests ({_REQUEST_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, 'open', '', ?)",
                (
                    request_id,
                    requester_id,
                    requester_email,
                    payer_email,
                    amount,
                    note,
                    time.time_ns(),
                ),
            )
            db.execute(
                "DELETE FROM payment_requests WHERE requester_id = ? AND status != 'open' "
                "AND id NOT IN (SELECT id FROM payment_requests WHERE requester_id = ? "
                "ORDER BY created_at DESC LIMIT ?)",
                (requester_id, requester_id, MAX_KEPT_REQUESTS),
            )
        found = self.request(request_id)
        if found is None:
            raise RuntimeError(f"payment request {request_id} lost right after writing it")
        return found

    def request(self, request_id: str) -> PaymentRequest | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM payment_requests WHERE id = ?", (request_id,)
            ).fetchone()
        return None if row is None else PaymentRequest(*row)

    def asked_of(self, payer_email: str) -> list[PaymentRequest]:
        """Open requests waiting for ``payer_email`` to pay or decline, newest first."""
        return self._list("payer_email = ? AND status = 'open'", payer_email)

    def asked_by(self, requester_id: str) -> list[PaymentRequest]:
        return self._list("requester_id = ?", requester_id)

    def _list(self, where: str, key: str) -> list[PaymentRequest]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM payment_requests WHERE {where} "
                "ORDER BY created_at DESC LIMIT ?",
                (key, MAX_LISTED),
            ).fetchall()
        return [PaymentRequest(*row) for row in rows]

    def settle(self, request_id: str, status: str, transfer_id: str = "") -> bool:
        """Close an open request; False if it was no longer open."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE payment_requests SET status = ?, transfer_id = ? "
                "WHERE id = ? AND status = 'open'",
                (status, transfer_id, request_id),
            )
        return cursor.rowcount == 1
