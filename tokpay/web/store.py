"""SQLite tables of the web app: server-side sessions and the user directory.

The user directory maps a verified e-mail address to a user and that user's
ledger account. Both gateway processes open the same file (WAL mode); every
call is one short statement, so it runs inline on the event loop.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

BUSY_TIMEOUT_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_sessions (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
"""
_USER_BY_EMAIL = "SELECT id, email, account_id FROM users WHERE email = ?"
_USER_BY_ID = "SELECT id, email, account_id FROM users WHERE id = ?"


class User(msgspec.Struct, frozen=True):
    id: str
    email: str
    account_id: str


class WebStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    # Sessions -----------------------------------------------------------------

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT data FROM web_sessions WHERE id = ? AND expires_at > ?",
                (session_id, int(time.time())),
            ).fetchone()
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    def save_session(self, session_id: str, data: dict[str, Any], ttl_seconds: int) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO web_sessions (id, data, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                (session_id, json.dumps(data), int(time.time()) + ttl_seconds),
            )

    def delete_session(self, session_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM web_sessions WHERE id = ?", (session_id,))
            db.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (int(time.time()),))

    # Users ----------------------------------------------------------------------

    def user_for_email(self, email: str) -> User | None:
        return self._one_user(_USER_BY_EMAIL, email)

    def user(self, user_id: str) -> User | None:
        return self._one_user(_USER_BY_ID, user_id)

    def _one_user(self, query: str, key: str) -> User | None:
        with self._connect() as db:
            row = db.execute(query, (key,)).fetchone()
        return None if row is None else User(*row)

    def enrol(self, email: str) -> User:
        """The user of ``email``, created with a fresh wallet account id on first sight."""
        user_id = f"u_{secrets.token_hex(8)}"
        account_id = f"w_{secrets.token_hex(10)}"
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO users (id, email, account_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                (user_id, email, account_id, int(time.time())),
            )
        user = self.user_for_email(email)
        if user is None:
            raise RuntimeError(f"user directory lost {email!r} right after writing it")
        return user

    def emails_of(self, account_ids: Iterable[str]) -> dict[str, str]:
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT account_id, email FROM users WHERE account_id IN ({marks})", ids
            ).fetchall()
        return {account_id: email for account_id, email in rows}
