"""SQLite tables of the web app: server-side sessions and the user directory.

The user directory maps an OpenID identity, the pair (issuer, ``sub``), to a user
and that user's ledger account; the e-mail address is the identity's current,
verified address (how payers find the user), not its key. Sessions are stored
under the SHA-256 of their id, so a copy of the file lets no one in. Both gateway
processes open the same file (WAL mode); every call is one short statement or
transaction, so it runs inline on the event loop.

Schema version 2 (``PRAGMA user_version``) replaced version 1 (users keyed by
e-mail, raw session ids) in place: see ``_migrate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import msgspec

BUSY_TIMEOUT_SECONDS = 10.0
SCHEMA_VERSION = 2
IDLE_TOUCH_SECONDS = 60
"""A session's idle deadline moves on at most once a minute (one write, not one per page)."""
MAX_SESSIONS_PER_USER = 50
"""Older sessions of a user beyond this many end when a new one starts."""
FILE_MODE = 0o600
DIR_MODE = 0o700

log = logging.getLogger(__name__)

_USERS_TABLE = """CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    issuer TEXT,
    subject TEXT,
    email TEXT UNIQUE,
    account_id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    UNIQUE (issuer, subject)
)"""
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT,
    data TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    idle_until INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS web_sessions_user ON web_sessions (user_id)",
    _USERS_TABLE,
    "CREATE TABLE IF NOT EXISTS web_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_USER_COLUMNS = "id, coalesce(email, ''), account_id"
_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?"
_USER_BY_ID = f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?"
_USER_BY_IDENTITY = f"SELECT {_USER_COLUMNS} FROM users WHERE issuer = ? AND subject = ?"
_LEGACY_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS} FROM users WHERE issuer IS NULL AND email = ?"


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One connection to the web app's SQLite file, in autocommit mode, closed after use."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


class User(msgspec.Struct, frozen=True):
    id: str
    email: str
    """The identity's current verified address; empty once another identity took it over."""
    account_id: str


def session_key(session_id: str) -> str:
    """What the table stores for a session id: its SHA-256, never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.parent.exists():
            # Gateway processes start together: another may create it first.
            with contextlib.suppress(FileExistsError):
                path.parent.mkdir(parents=True, mode=DIR_MODE)
                path.parent.chmod(DIR_MODE)
        # Sessions and addresses are private: the file (and SQLite's -wal and -shm
        # files, which take the database's mode) is readable by this user alone.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            # Another gateway process may be opening or closing the same file right now:
            # SQLite removes -wal and -shm when the last connection closes.
            with contextlib.suppress(FileNotFoundError):
                file.chmod(FILE_MODE)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                _migrate(db)
                for statement in _SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    def signing_key(self) -> bytes:
        """This installation's key for signed cookies, made on first use and shared by
        every gateway process through the file."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO web_secrets (name, value) VALUES ('cookie-signing', ?)",
                (secrets.token_hex(32),),
            )
            row = db.execute(
                "SELECT value FROM web_secrets WHERE name = 'cookie-signing'"
            ).fetchone()
        return bytes.fromhex(row[0])

    # Sessions -----------------------------------------------------------------

    def load_session(self, session_id: str, idle_seconds: int) -> dict[str, Any] | None:
        """The session's data, or None once it expired, idled out or was ended."""
        key = session_key(session_id)
        now = int(time.time())
        with self._connect() as db:
            row = db.execute(
                "SELECT data, idle_until FROM web_sessions "
                "WHERE id_hash = ? AND expires_at > ? AND idle_until > ?",
                (key, now, now),
            ).fetchone()
            if row is None:
                return None
            if row[1] < now + idle_seconds - IDLE_TOUCH_SECONDS:
                db.execute(
                    "UPDATE web_sessions SET idle_until = ? WHERE id_hash = ?",
                    (now + idle_seconds, key),
                )
        data: dict[str, Any] = json.loads(row[0])
        return data

    def save_session(
        self, session_id: str, data: dict[str, Any], ttl_seconds: int, idle_seconds: int
    ) -> None:
        now = int(time.time())
        user_id = data.get("user_id") if isinstance(data.get("user_id"), str) else None
        with self._connect() as db:
            db.execute(
                "INSERT INTO web_sessions (id_hash, user_id, data, expires_at, idle_until) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id_hash) DO UPDATE SET "
                "data = excluded.data, user_id = excluded.user_id, idle_until = excluded.idle_until",
                (
                    session_key(session_id),
                    user_id,
                    json.dumps(data),
                    now + ttl_seconds,
                    now + idle_seconds,
                ),
            )
            if user_id is not None:
                db.execute(
                    "DELETE FROM web_sessions WHERE user_id = ? AND id_hash NOT IN ("
                    "SELECT id_hash FROM web_sessions WHERE user_id = ? "
                    "ORDER BY expires_at DESC LIMIT ?)",
                    (user_id, user_id, MAX_SESSIONS_PER_USER),
                )

    def delete_session(self, session_id: str) -> None:
        now = int(time.time())
        with self._connect() as db:
            db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (session_key(session_id),))
            db.execute(
                "DELETE FROM web_sessions WHERE expires_at <= ? OR idle_until <= ?", (now, now)
            )

    def delete_user_sessions(self, user_id: str) -> int:
        """End every session of the user (log out everywhere); how many ended."""
        with self._connect() as db:
            cursor = db.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))
        return cursor.rowcount

    def session_count(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT count(*) FROM web_sessions").fetchone()
        return int(row[0])

    # Users ----------------------------------------------------------------------

    def user_for_email(self, email: str) -> User | None:
        return self._one_user(_USER_BY_EMAIL, email)

    def user(self, user_id: str) -> User | None:
        return self._one_user(_USER_BY_ID, user_id)

    def _one_user(self, query: str, *key: str) -> User | None:
        with self._connect() as db:
            row = db.execute(query, key).fetchone()
        return None if row is None else User(*row)

    def sign_in(self, issuer: str, subject: str, email: str) -> User:
        """The user of the identity (issuer, subject), with ``email`` as its current
        verified address; created with a fresh wallet account id on first sight.

        - The same identity with a new address keeps its user and wallet.
        - A user from before identities were keys (schema 1: issuer NULL) is claimed by
          the first identity that signs in with its address.
        - An address now verified for another identity moves to that identity: the
          user that held it keeps its wallet but no longer receives payments to it.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                user = self._sign_in(db, issuer, subject, email)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return user

    def _sign_in(self, db: sqlite3.Connection, issuer: str, subject: str, email: str) -> User:
        row = db.execute(_USER_BY_IDENTITY, (issuer, subject)).fetchone()
        if row is None:
            legacy = db.execute(_LEGACY_USER_BY_EMAIL, (email,)).fetchone()
            if legacy is not None:
                db.execute(
                    "UPDATE users SET issuer = ?, subject = ? WHERE id = ?",
                    (issuer, subject, legacy[0]),
                )
                log.info("user %s (from before identity keys) claimed by %s", legacy[0], issuer)
                return User(*legacy)
        if row is not None and row[1] == email:
            return User(*row)
        released = db.execute(
            "UPDATE users SET email = NULL WHERE email = ? RETURNING id", (email,)
        ).fetchall()
        for (other,) in released:
            log.warning("address moved from user %s to another identity of %s", other, issuer)
        if row is not None:
            db.execute("UPDATE users SET email = ? WHERE id = ?", (email, row[0]))
            return User(row[0], email, row[2])
        user = User(f"u_{secrets.token_hex(8)}", email, f"w_{secrets.token_hex(10)}")
        db.execute(
            "INSERT INTO users (id, issuer, subject, email, account_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (user.id, issuer, subject, email, user.account_id, int(time.time())),
        )
        return user

    def emails_of(self, account_ids: Iterable[str]) -> dict[str, str]:
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT account_id, email FROM users WHERE email IS NOT NULL "
                f"AND account_id IN ({marks})",
                ids,
            ).fetchall()
        return {account_id: email for account_id, email in rows}


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a schema-1 file to schema 2 in place (inside the caller's transaction).

    Users keep their id, address and wallet; their identity is unknown until their
    first login (issuer and subject NULL), when ``sign_in`` binds it. Sessions end:
    their raw ids were on disk, readable to whoever could read the file.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "web_sessions" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(web_sessions)")}
        if "id_hash" not in columns:
            db.execute("DROP TABLE web_sessions")
    if "users" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
        if "subject" not in columns:
            db.execute("ALTER TABLE users RENAME TO users_v1")
            db.execute(_USERS_TABLE)
            db.execute(
                "INSERT INTO users (id, issuer, subject, email, account_id, created_at) "
                "SELECT id, NULL, NULL, email, account_id, created_at FROM users_v1"
            )
            db.execute("DROP TABLE users_v1")
            log.info("web store: users table migrated to (issuer, sub) keys")
