"""A shard replica's on-disk state: accounts, holds, transfers, history and the id index.

SQLite in WAL mode (see bench/RESULTS.md, "choosing the history store", for the
benchmark and the reasons). The write-ahead log stays the durable record: each batch
is written here, in one transaction, only after its log record is durable, and with
``synchronous=NORMAL`` no commit waits for an fsync. A crash can lose the newest
commits of this file (never its integrity: that is what WAL mode promises under
NORMAL), and recovery replays them from the log, which is never truncated past what
a checkpoint made durable here. Every row is keyed by something the log determines
(an account's entry number, a transfer id), so replaying a record writes the same rows.

The store is the checkpoint: ``applied_sequence`` says which log record it holds, and
``checkpoint`` (another connection, on a background thread, off the interpreter lock
while SQLite works) makes it durable, after which older log segments can go. Nothing
is ever encoded whole: a checkpoint costs what changed, not what exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
from msgspec.structs import astuple

from tokpay.ledger.changes import Changes, Mark
from tokpay.ledger.model import Account, Credit, Prepared, Transfer, TransferOrder
from tokpay.wal._files import fsync_file

log = logging.getLogger("tokpay.store")

STORE_FILE = "store.sqlite"
CACHE_KIB = 16 * 1024
"""SQLite's page cache per connection (KiB): the store's only in-memory cache."""
WAL_LIMIT_BYTES = 16 * 1024 * 1024
BUSY_TIMEOUT_MS = 10_000
LOOKUP_CHUNK = 500
"""Ids per ``IN (...)`` query of ``bindings`` (SQLite allows 32,766 parameters)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prepared (txid TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transfers (id TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    account TEXT NOT NULL, n INTEGER NOT NULL, transfer_id TEXT NOT NULL,
    effect INTEGER NOT NULL, balance_after INTEGER NOT NULL,
    PRIMARY KEY (account, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    id TEXT PRIMARY KEY, digest BLOB NOT NULL, code TEXT, detail TEXT, at INTEGER)
    WITHOUT ROWID;
"""
"""``marks`` holds the ids this shard knows without holding their transfer: ids claimed
here for a transfer that lives on other shards (``code`` NULL), and refusals (``code``
set, with the time ``at`` they were decided)."""


class _StoredTransfer(msgspec.Struct, array_like=True):
    """A transfer in its compact on-disk form (the id is the row's key)."""

    debit: str
    credits: list[tuple[str, int]]
    currency: str
    memo: str
    kind: str
    created_at: int


def encode_transfer(transfer: Transfer) -> bytes:
    order = transfer.order
    return _ENCODER.encode(
        _StoredTransfer(
            order.debit,
            [(c.account, c.amount) for c in order.credits],
            order.currency,
            order.memo,
            order.kind,
            transfer.created_at,
        )
    )


def decode_transfer(transfer_id: str, body: bytes) -> Transfer:
    stored = _TRANSFER_DECODER.decode(body)
    order = TransferOrder(
        id=transfer_id,
        debit=stored.debit,
        credits=tuple(Credit(a, n) for a, n in stored.credits),
        currency=stored.currency,
        memo=stored.memo,
        kind=stored.kind,
    )
    return Transfer(order=order, created_at=stored.created_at)


_ENCODER = msgspec.msgpack.Encoder()
_TRANSFER_DECODER = msgspec.msgpack.Decoder(_StoredTransfer)
_ACCOUNT_DECODER = msgspec.msgpack.Decoder(Account)
_PREPARED_DECODER = msgspec.msgpack.Decoder(Prepared)


class StoreError(Exception):
    """The store file cannot be used (corrupt, another shard's, newer than its log)."""


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    # A writer held back by a checkpoint's tail waits for it rather than failing.
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # After a checkpoint lets the WAL start over, its file is cut back to this size.
    connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    return connection


class ShardStore:
    """One replica's store file. The owner's thread writes and reads; one background
    thread may run ``checkpoint`` and ``copy_to`` on connections of their own."""

    def __init__(self, root: Path, shard: int, shard_count: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / STORE_FILE
        try:
            self._db = _connect(self.path)
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off this thread
            self._db.executescript(_SCHEMA)
            self._meta_init(shard, shard_count)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: {error}") from error
        self.applied_sequence = self._meta("applied_sequence")
        self.transfers = self._meta("transfers")
        """How many transfers this shard holds (a count, kept in step with every write)."""
        self.durable_sequence = self.applied_sequence
        self._side: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._long_reads = 0
        """Copies and checks running: a RESTART checkpoint would wait on them, holding
        the writer back, so only PASSIVE runs meanwhile."""

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _meta_init(self, shard: int, shard_count: int) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("shard", shard),
                    ("shard_count", shard_count),
                    ("applied_sequence", 0),
                    ("transfers", 0),
                ],
            )
        elif (rows.get("shard"), rows.get("shard_count")) != (shard, shard_count):
            raise StoreError(
                f"{self.path} belongs to shard {rows.get('shard')}/{rows.get('shard_count')}"
            )

    # -- what recovery loads -------------------------------------------------------------

    def accounts(self) -> Iterator[Account]:
        for (body,) in self._db.execute("SELECT body FROM accounts"):
            yield _ACCOUNT_DECODER.decode(body)

    def prepared(self) -> Iterator[Prepared]:
        for (body,) in self._db.execute("SELECT body FROM prepared"):
            yield _PREPARED_DECODER.decode(body)

    # -- the write path ------------------------------------------------------------------

    def write(self, sequence: int, changes: Changes) -> None:
        """Apply one log record's changes, marking the store as holding ``sequence``."""
        db = self._db
        db.execute("BEGIN")
        try:
            if changes.accounts:
                db.executemany(
                    "INSERT OR REPLACE INTO accounts VALUES (?, ?)",
                    [(a.id, _ENCODER.encode(a)) for a in changes.accounts.values()],
                )
            if changes.transfers:
                db.executemany(
                    "INSERT OR REPLACE INTO transfers VALUES (?, ?)",
                    [(t.order.id, encode_transfer(t)) for t in changes.transfers],
                )
            if changes.history:
                db.executemany(
                    "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?)",
                    [astuple(row) for row in changes.history],
                )
            if changes.prepared:
                db.executemany(
                    "INSERT OR REPLACE INTO prepared VALUES (?, ?)",
                    [(p.txid, _ENCODER.encode(p)) for p in changes.prepared.values()],
                )
            if changes.released:
                db.executemany(
                    "DELETE FROM prepared WHERE txid=?", [(t,) for t in changes.released]
                )
            if changes.marks:
                db.executemany(
                    "INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?)",
                    [astuple(mark) for mark in changes.marks],
                )
            transfers = self.transfers + len(changes.transfers)
            db.executemany(
                "UPDATE meta SET value=? WHERE key=?",
                [(sequence, "applied_sequence"), (transfers, "transfers")],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.applied_sequence = sequence
        self.transfers = transfers

    # -- reads ---------------------------------------------------------------------------

    def transfer(self, transfer_id: str) -> Transfer | None:
        row = self._db.execute("SELECT body FROM transfers WHERE id=?", (transfer_id,)).fetchone()
        return None if row is None else decode_transfer(transfer_id, row[0])

    def mark(self, transfer_id: str) -> Mark | None:
        row = self._db.execute(
            "SELECT id, digest, code, detail, at FROM marks WHERE id=?", (transfer_id,)
        ).fetchone()
        return None if row is None else _mark_of(row)

    def bindings(self, transfer_ids: list[str]) -> tuple[dict[str, Transfer], dict[str, Mark]]:
        """The stored transfers and marks of ``transfer_ids``, one query per table per
        ``LOOKUP_CHUNK`` ids (a batch's ids judged together)."""
        transfers: dict[str, Transfer] = {}
        marks: dict[str, Mark] = {}
        db = self._db
        unique = list(dict.fromkeys(transfer_ids))
        for start in range(0, len(unique), LOOKUP_CHUNK):
            chunk = unique[start : start + LOOKUP_CHUNK]
            places = ",".join("?" * len(chunk))
            for transfer_id, body in db.execute(
                f"SELECT id, body FROM transfers WHERE id IN ({places})", chunk
            ):
                transfers[transfer_id] = decode_transfer(transfer_id, body)
            for row in db.execute(
                f"SELECT id, digest, code, detail, at FROM marks WHERE id IN ({places})", chunk
            ):
                marks[row[0]] = _mark_of(row)
        return transfers, marks

    def history(
        self, account_id: str, limit: int, below: int
    ) -> list[tuple[Transfer, int, int, int]]:
        """Up to ``limit`` entries numbered below ``below``, newest first:
        (transfer, effect, balance after, entry number)."""
        rows = self._db.execute(
            "SELECT h.transfer_id, t.body, h.effect, h.balance_after, h.n FROM history h "
            "JOIN transfers t ON t.id = h.transfer_id "
            "WHERE h.account=? AND h.n<? ORDER BY h.n DESC LIMIT ?",
            (account_id, below, limit),
        ).fetchall()
        return [(decode_transfer(i, body), e, b, n) for i, body, e, b, n in rows]

    def count(self, table: str) -> int:
        if table not in {"accounts", "transfers", "history", "marks", "prepared"}:
            raise ValueError(table)
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def content_digest(self) -> bytes:
        """A digest of every row, in key order: equal digests mean equal stores."""
        digest = hashlib.blake2b(digest_size=32)
        for table in ("accounts", "prepared", "transfers", "history", "marks"):
            digest.update(table.encode())
            for row in self._db.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(msgspec.msgpack.encode(row))
        return digest.digest()

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- durability and copies (background thread) --------------------------------------

    def _side_connection(self) -> sqlite3.Connection:
        if self._side is None:
            self._side = _connect(self.path)
        return self._side

    def checkpoint(self) -> int:
        """Make every committed batch durable; returns the sequence now durable.

        Reads ``applied_sequence`` first, then checkpoints: SQLite syncs the WAL before
        a checkpoint (``synchronous=NORMAL``), and the WAL then holds every commit made
        before the read. The database file is synced after the pages are copied.
        """
        with self._side_lock:
            db = self._side_connection()
            sequence = int(
                db.execute("SELECT value FROM meta WHERE key='applied_sequence'").fetchone()[0]
            )
            # PASSIVE copies the bulk without holding up the writer; RESTART then copies the
            # few frames written meanwhile, holding the writer back for that tail only, so
            # the WAL can start over (under steady writes a PASSIVE alone never completes
            # and the WAL file would grow without end).
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not self._long_reads:
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            fsync_file(f"{self.path}-wal", missing_ok=True)
            fsync_file(self.path)
        self.durable_sequence = max(self.durable_sequence, sequence)
        return sequence

    def copy_to(self, target: Path) -> int:
        """A consistent, compacted copy of the store (for a new backup); returns the
        sequence it holds. Runs as a read transaction: the writer is never blocked."""
        target.unlink(missing_ok=True)
        # A connection of its own: checkpoints go on meanwhile (they can make durable,
        # though not recycle, what the copy's read transaction still sees).
        with self._long_read() as db:
            db.execute("VACUUM INTO ?", (str(target),))
        copy = sqlite3.connect(target)
        try:
            row = copy.execute("SELECT value FROM meta WHERE key='applied_sequence'").fetchone()
        finally:
            copy.close()
        fsync_file(target)
        return int(row[0])

    def verify(self) -> str:
        """SQLite's ``quick_check`` of the whole file ("ok" or what is wrong), on a connection
        of its own: O(store), so it runs after open on a background thread, never in it."""
        with self._long_read() as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(r[0]) for r in rows[:5])

    @contextlib.contextmanager
    def _long_read(self) -> Iterator[sqlite3.Connection]:
        with self._side_lock:
            self._long_reads += 1
        db = _connect(self.path)
        try:
            yield db
        finally:
            db.close()
            with self._side_lock:
                self._long_reads -= 1

    def close(self) -> None:
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None
        self._db.close()


def _mark_of(row: tuple[str, bytes, str | None, str | None, int | None]) -> Mark:
    return Mark(row[0], row[1], row[2], row[3] or "", row[4] or 0)
