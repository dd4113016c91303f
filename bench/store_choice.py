"""Which embedded store keeps each replica's history (issue 10): SQLite, LMDB or RocksDB.

Writes the same generated workload (100K accounts, one hot account taking 10% of credits,
batches of 500 transfers of 1 debit -> 1..3 credits) into every candidate in one process,
rotating which candidate goes first in each batch, and times each batch's transaction.
Then, one fresh process per candidate at full size: transfer-id lookups (half present,
half absent), 50-entry history pages of the hot account below a random cursor, a
consistent copy taken while a paced writer (5K transfers/s) and a 1 ms ticker thread
keep running, disk bytes per transfer after a checkpoint, and the process's RSS.

    .venv/bin/python bench/store_choice.py [--transfers 2000000 | --quick] [--json out.json]

Candidates: sqlite (WAL, synchronous=NORMAL, background PASSIVE checkpoints),
lmdb-sync (sync=True, metasync=False: one data fsync per commit), lmdb-nosync (sync=False
plus env.sync() in the background every CHECKPOINT_EVERY batches) and rocksdb (rocksdict,
default options, its own WAL not fsynced).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgspec

ACCOUNTS = 100_000
HOT = "acct-0000000"
HOT_SHARE = 0.10
BATCH = 500
PAGE = 50
CHECKPOINT_EVERY = 20  # batches (10K transfers) between background checkpoints / syncs
SQLITE_CACHE_KIB = 65_536  # bounded page cache per connection
LMDB_MAP_BYTES = 1 << 36  # address space only; the file grows as needed
LOOKUPS = 20_000
PAGES = 5_000
BEFORE_COPY_S = 3.0
PACED_BATCHES_PER_S = 10  # 5K transfers/s, the target rate
ID_STRIDE = 0x9E3779B97F4B  # odd, so i -> i * stride mod 2**48 is a bijection: unique ids
ID_SPACE = 1 << 48
ABSENT_BASE = 1 << 47  # counters at or above this are never written
CANDIDATES = ("sqlite", "lmdb-sync", "lmdb-nosync", "rocksdb")
encode = msgspec.msgpack.encode
decode = msgspec.msgpack.decode


def transfer_id(counter: int) -> str:
    return f"t-{counter * ID_STRIDE % ID_SPACE:012x}"


@dataclass
class Batch:
    transfers: list[tuple[str, bytes]]
    history: list[tuple[str, int, str, int, int]]  # account, n, transfer id, effect, balance
    accounts: list[tuple[str, bytes]]
    seq: int


@dataclass
class Workload:
    """A seeded stream of batches; it keeps the balances so every history row is true."""

    seed: int
    rng: random.Random = field(init=False)
    balances: list[int] = field(default_factory=lambda: [0] * ACCOUNTS)
    entries: list[int] = field(default_factory=lambda: [0] * ACCOUNTS)
    made: int = 0
    seq: int = 0
    clock: int = 1_767_225_600_000_000

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def next_batch(self) -> Batch:
        rng, transfers, history, touched = self.rng, [], [], set()
        for _ in range(BATCH):
            tid = transfer_id(self.made)
            self.made += 1
            self.clock += rng.randint(50, 400)
            debit = rng.randrange(ACCOUNTS)
            credits: dict[int, int] = {}
            legs_wanted = rng.randint(1, 3)
            while len(credits) < legs_wanted:
                to = 0 if rng.random() < HOT_SHARE else rng.randrange(ACCOUNTS)
                if to != debit:
                    credits[to] = rng.randint(1, 10_000)
            legs = [(debit, -sum(credits.values())), *credits.items()]
            for index, effect in legs:
                self.balances[index] += effect
                self.entries[index] += 1
                touched.add(index)
                history.append(
                    (name(index), self.entries[index], tid, effect, self.balances[index])
                )
            memo = "rent" if rng.random() < 0.05 else ""
            body = [name(debit), [[name(i), a] for i, a in credits.items()], "USD", memo,
                    "transfer", self.clock]  # fmt: skip
            transfers.append((tid, encode(body)))
        self.seq += 1
        accounts = [(name(i), encode([self.balances[i], self.entries[i]])) for i in touched]
        if sum(self.balances) != 0:
            raise RuntimeError("workload broke the zero-sum rule")
        return Batch(transfers, history, accounts, self.seq)


def name(index: int) -> str:
    return f"acct-{index:07d}"


class Background:
    """Runs a job in its own thread every `every` pokes; pokes during a run are merged."""

    def __init__(self, open_job: Callable[[], Callable[[], object]], every: int) -> None:
        self._due, self._stop, self._every, self._pokes = threading.Event(), False, every, 0
        self._thread = threading.Thread(target=self._loop, args=(open_job,), daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._pokes += 1
        if self._pokes % self._every == 0:
            self._due.set()

    def _loop(self, open_job: Callable[[], Callable[[], object]]) -> None:
        job = open_job()  # built in this thread: a sqlite3 connection belongs to one thread
        while True:
            self._due.wait()
            self._due.clear()
            if self._stop:
                return
            job()

    def close(self) -> None:
        self._stop = True
        self._due.set()
        self._thread.join()


Row = tuple[int, str, int, int]  # n, transfer id, effect, balance after


SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers(id TEXT PRIMARY KEY, body BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history(account TEXT, n INTEGER, transfer_id TEXT,
  effect INTEGER, balance_after INTEGER, PRIMARY KEY (account, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY, body BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.file = path / "store.sqlite"
        self.db = sqlite3.connect(self.file, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0",
                       f"cache_size=-{SQLITE_CACHE_KIB}"):  # fmt: skip
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(SCHEMA)
        self.checkpointer = Background(self._open_checkpointer, CHECKPOINT_EVERY)

    def _open_checkpointer(self) -> Callable[[], object]:
        other = sqlite3.connect(self.file, isolation_level=None)
        return lambda: other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def write(self, batch: Batch) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO transfers VALUES (?, ?)", batch.transfers)
        self.db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?)", batch.history)
        self.db.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?)", batch.accounts)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('applied_seq', ?)", (batch.seq,))
        self.db.execute("COMMIT")
        self.checkpointer.poke()

    def _one(self, sql: str, key: str) -> Any:
        row = self.db.execute(sql, (key,)).fetchone()
        return None if row is None else row[0]

    def transfer(self, tid: str) -> bytes | None:
        return self._one("SELECT body FROM transfers WHERE id = ?", tid)  # type: ignore[no-any-return]

    def page(self, account: str, before: int) -> list[Row]:
        return self.db.execute(
            "SELECT n, transfer_id, effect, balance_after FROM history"
            " WHERE account = ? AND n < ? ORDER BY n DESC LIMIT ?", (account, before, PAGE),
        ).fetchall()  # fmt: skip

    def account_entries(self, account: str) -> int:
        return int(decode(self._one("SELECT body FROM accounts WHERE id = ?", account))[1])

    def applied_seq(self) -> int:
        return int(self._one("SELECT value FROM meta WHERE key = ?", "applied_seq"))

    def settle(self) -> None:
        self.checkpointer.close()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def copy_to(self, dest: Path) -> None:
        dest.mkdir(parents=True)
        reader = sqlite3.connect(self.file, isolation_level=None)
        reader.execute("VACUUM INTO ?", (str(dest / "store.sqlite"),))
        reader.close()

    def close(self) -> None:
        self.settle()
        self.db.close()


def history_key(account: str, n: int) -> bytes:
    return account.encode() + b"\0" + n.to_bytes(8, "big")


def key_values(batch: Batch) -> list[list[tuple[bytes, bytes]]]:
    """The batch as (key, value) pairs for transfers, history, accounts and meta."""
    return [
        [(tid.encode(), body) for tid, body in batch.transfers],
        [(history_key(a, n), encode((tid, effect, bal))) for a, n, tid, effect, bal in batch.history],
        [(account.encode(), body) for account, body in batch.accounts],
        [(b"applied_seq", batch.seq.to_bytes(8, "big"))],
    ]  # fmt: skip


def rows_back(pairs: Iterator[tuple[bytes, bytes]], account: str) -> list[Row]:
    """Up to PAGE history rows of `account` from pairs that walk the keys downwards."""
    prefix, rows = account.encode() + b"\0", []
    for key, value in pairs:
        if len(rows) == PAGE or not key.startswith(prefix):
            break
        rows.append((int.from_bytes(key[-8:], "big"), *decode(value)))
    return rows


TABLES = ("transfers", "history", "accounts", "meta")


class LmdbStore:
    def __init__(self, path: Path, sync: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=LMDB_MAP_BYTES, max_dbs=len(TABLES),
                             sync=sync, metasync=False, readahead=False)  # fmt: skip
        self.dbs = [self.env.open_db(t.encode()) for t in TABLES]
        self.syncer = None if sync else Background(lambda: self.env.sync, CHECKPOINT_EVERY)

    def write(self, batch: Batch) -> None:
        with self.env.begin(write=True) as txn:
            for db, items in zip(self.dbs, key_values(batch), strict=True):
                txn.cursor(db).putmulti(items)
        if self.syncer is not None:
            self.syncer.poke()

    def _get(self, table: int, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.dbs[table])  # type: ignore[no-any-return]

    def transfer(self, tid: str) -> bytes | None:
        return self._get(0, tid.encode())

    def page(self, account: str, before: int) -> list[Row]:
        with self.env.begin() as txn:
            cursor = txn.cursor(self.dbs[1])
            placed = (
                cursor.prev() if cursor.set_range(history_key(account, before)) else cursor.last()
            )
            return rows_back(cursor.iterprev() if placed else iter(()), account)

    def account_entries(self, account: str) -> int:
        return int(decode(self._get(2, account.encode()) or b"")[1])

    def applied_seq(self) -> int:
        return int.from_bytes(self._get(3, b"applied_seq") or b"", "big")

    def settle(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        self.env.sync(True)

    def copy_to(self, dest: Path) -> None:
        dest.mkdir(parents=True)
        self.env.copy(str(dest), compact=True)

    def close(self) -> None:
        self.settle()
        self.env.close()


class RocksStore:
    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict  # optional: installed only for this comparison

        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        families = {t: Options(raw_mode=True) for t in TABLES}
        self.db = Rdict(str(path / "db"), options=options, column_families=families)
        self.handles = [self.db.get_column_family_handle(t) for t in TABLES]
        self.families = [self.db.get_column_family(t) for t in TABLES]

    def write(self, batch: Batch) -> None:
        from rocksdict import WriteBatch

        writes = WriteBatch(raw_mode=True)
        for handle, items in zip(self.handles, key_values(batch), strict=True):
            for key, value in items:
                writes.put(key, value, handle)
        self.db.write(writes)

    def transfer(self, tid: str) -> bytes | None:
        return self.families[0].get(tid.encode())  # type: ignore[no-any-return]

    def page(self, account: str, before: int) -> list[Row]:
        cursor = self.families[1].iter()
        cursor.seek_for_prev(history_key(account, before - 1))

        def walk() -> Iterator[tuple[bytes, bytes]]:
            while cursor.valid():
                yield cursor.key(), cursor.value()
                cursor.prev()

        return rows_back(walk(), account)

    def account_entries(self, account: str) -> int:
        return int(decode(self.families[2].get(account.encode()))[1])

    def applied_seq(self) -> int:
        return int.from_bytes(self.families[3].get(b"applied_seq"), "big")

    def settle(self) -> None:
        self.db.flush()

    def copy_to(self, dest: Path) -> None:
        from rocksdict import Checkpoint

        dest.mkdir(parents=True)
        Checkpoint(self.db).create_checkpoint(str(dest / "db"))

    def close(self) -> None:
        self.settle()
        self.db.close()


# Each candidate holds the lead's four tables and writes one transaction per batch; settle()
# stops its background work and leaves complete files; copy_to() runs in another thread.
Store = SqliteStore | LmdbStore | RocksStore


def open_store(candidate: str, path: Path) -> Store:
    if candidate == "sqlite":
        return SqliteStore(path)
    if candidate.startswith("lmdb"):
        return LmdbStore(path, sync=candidate == "lmdb-sync")
    return RocksStore(path)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def commit_stats(seconds: list[float]) -> dict[str, float]:
    return {"transfers_per_s": round(BATCH * len(seconds) / sum(seconds)),
            "p50_ms": percentile(seconds, 0.5) * 1e3, "p99_ms": percentile(seconds, 0.99) * 1e3,
            "max_ms": max(seconds) * 1e3}  # fmt: skip


def write_phase(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """Every batch goes to every candidate; the candidate that goes first rotates."""
    stores = {c: open_store(c, args.dir / c) for c in args.candidates}
    times: dict[str, list[float]] = {c: [] for c in args.candidates}
    batches, started = args.transfers // BATCH, time.perf_counter()
    for i in range(batches):
        batch = workload.next_batch()
        for j in range(len(args.candidates)):
            candidate = args.candidates[(i + j) % len(args.candidates)]
            t0 = time.perf_counter()
            stores[candidate].write(batch)
            times[candidate].append(time.perf_counter() - t0)
        if (i + 1) % max(1, batches // 20) == 0:
            rates = ", ".join(f"{c} {BATCH * len(t) / sum(t):,.0f}/s" for c, t in times.items())
            print(f"[write] {workload.made:,} transfers, {time.perf_counter() - started:.0f} s:"
                  f" {rates}", flush=True)  # fmt: skip
    for store in stores.values():
        store.close()
    tenth = max(1, batches // 10)
    return {c: {"all": commit_stats(t), "first_10pct": commit_stats(t[:tenth]),
                "last_10pct": commit_stats(t[-tenth:])} for c, t in times.items()}  # fmt: skip


def timed(call: Callable[[], object], count: int) -> list[float]:
    micros = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        micros.append((time.perf_counter() - t0) * 1e6)
    return micros


def read_probes(store: Store, workload: Workload, rng: random.Random) -> dict[str, float]:
    present = [transfer_id(rng.randrange(workload.made)) for _ in range(LOOKUPS // 2)]
    absent = [transfer_id(ABSENT_BASE + i) for i in range(LOOKUPS // 2)]
    asked = [t for pair in zip(present, absent, strict=True) for t in pair]
    answers = iter(asked)
    lookups = timed(lambda: store.transfer(next(answers)), LOOKUPS)
    if any(store.transfer(t) is None for t in present[:100]) or store.transfer(absent[0]):
        raise RuntimeError("a transfer-id lookup gave a wrong answer")
    hot = workload.entries[0]
    newest = store.page(HOT, hot + 1)
    if newest[0][0] != hot or newest[0][3] != workload.balances[0] or len(newest) != PAGE:
        raise RuntimeError(f"hot account's newest page is wrong: {newest[:1]}")
    pages = timed(lambda: store.page(HOT, rng.randint(PAGE + 1, hot + 1)), PAGES)
    return {"lookup_p50_us": percentile(lookups, 0.5), "lookup_p99_us": percentile(lookups, 0.99),
            "page_p50_us": percentile(pages, 0.5), "page_p99_us": percentile(pages, 0.99),
            "hot_entries": hot}  # fmt: skip


class Ticker:
    """A thread that asks for a 1 ms sleep in a loop and keeps its worst wake-up gap per phase."""

    def __init__(self) -> None:
        self.phase, self.worst, self._stop = "before", {"before": 0.0, "during": 0.0}, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            t0 = time.perf_counter()
            time.sleep(0.001)
            self.worst[self.phase] = max(self.worst[self.phase], time.perf_counter() - t0)

    def stop(self) -> dict[str, float]:
        self._stop = True
        self._thread.join()
        return {phase: gap * 1e3 for phase, gap in self.worst.items()}


def copy_under_writes(
    store: Store, candidate: str, workload: Workload, dest: Path
) -> dict[str, Any]:
    """A paced writer keeps committing while another thread takes the consistent copy."""
    commits: dict[str, list[float]] = {"before": [], "during": []}
    ticker, copy_took = Ticker(), [0.0]

    def take_copy() -> None:
        t0 = time.perf_counter()
        store.copy_to(dest)
        copy_took[0] = time.perf_counter() - t0

    copier = threading.Thread(target=take_copy)
    start, seq_at_start = time.perf_counter(), 0
    slot = start
    while ticker.phase == "before" or copier.is_alive():
        if ticker.phase == "before" and time.perf_counter() - start >= BEFORE_COPY_S:
            seq_at_start, ticker.phase = workload.seq, "during"
            copier.start()
        batch = workload.next_batch()
        t0 = time.perf_counter()
        store.write(batch)
        commits[ticker.phase].append(time.perf_counter() - t0)
        slot += 1 / PACED_BATCHES_PER_S
        time.sleep(max(0.0, slot - time.perf_counter()))
    copier.join()
    gaps = ticker.stop()
    copy = open_store(candidate, dest)
    entries, seq = copy.account_entries(HOT), copy.applied_seq()
    consistent = copy.page(HOT, 1 << 62)[0][0] == entries and seq_at_start <= seq <= workload.seq
    copy.close()
    if not consistent:
        raise RuntimeError("the copy is not one consistent state")
    return {"copy_s": copy_took[0], "copy_bytes": disk_bytes(dest),
            "max_commit_before_ms": max(commits["before"]) * 1e3,
            "max_commit_during_ms": max(commits["during"]) * 1e3,
            "batches_during": len(commits["during"]),
            "ticker_worst_before_ms": gaps["before"], "ticker_worst_during_ms": gaps["during"]}  # fmt: skip


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_mib() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """In its own process: reads, copy under writes, disk after a checkpoint, RSS."""
    workload = pickle.loads((args.dir / "workload.pickle").read_bytes())
    store = open_store(args.probe, args.dir / args.probe)
    print(f"[{args.probe}] reads at {workload.made:,} transfers", file=sys.stderr, flush=True)
    result = read_probes(store, workload, random.Random(args.seed + 1))
    print(f"[{args.probe}] copy under writes", file=sys.stderr, flush=True)
    result |= copy_under_writes(store, args.probe, workload, args.dir / f"{args.probe}-copy")
    store.settle()  # checkpointed, so the files hold everything
    result |= {"transfers": workload.made, "disk_bytes": disk_bytes(args.dir / args.probe),
               "disk_bytes_per_transfer": disk_bytes(args.dir / args.probe) / workload.made,
               "rss_mib": rss_mib()}  # fmt: skip
    store.close()
    return result


ROWS = [
    ("write transfers/s, whole run", lambda w, p: f"{w['all']['transfers_per_s']:,}"),
    ("transfers/s first 10% / last 10%", lambda w, p: f"{w['first_10pct']['transfers_per_s']:,} / {w['last_10pct']['transfers_per_s']:,}"),
    ("batch commit p50/p99/max ms, first 10%", lambda w, p: "{p50_ms:.1f} / {p99_ms:.1f} / {max_ms:.0f}".format(**w["first_10pct"])),
    ("batch commit p50/p99/max ms, last 10%", lambda w, p: "{p50_ms:.1f} / {p99_ms:.1f} / {max_ms:.0f}".format(**w["last_10pct"])),
    ("id lookup p50/p99 µs (50% absent)", lambda w, p: f"{p['lookup_p50_us']:.1f} / {p['lookup_p99_us']:.1f}"),
    ("hot history page p50/p99 µs", lambda w, p: f"{p['page_p50_us']:.0f} / {p['page_p99_us']:.0f}"),
    ("disk bytes per transfer (after checkpoint)", lambda w, p: f"{p['disk_bytes_per_transfer']:.0f}"),
    ("consistent copy: seconds / MB", lambda w, p: f"{p['copy_s']:.1f} / {p['copy_bytes'] / 1e6:,.0f}"),
    ("max commit ms before / during copy", lambda w, p: f"{p['max_commit_before_ms']:.0f} / {p['max_commit_during_ms']:.0f}"),
    ("1 ms ticker worst gap ms before / during", lambda w, p: f"{p['ticker_worst_before_ms']:.1f} / {p['ticker_worst_during_ms']:.1f}"),
    ("RSS MiB (anon / file-backed)", lambda w, p: f"{p['rss_mib']['RssAnon']:.0f} / {p['rss_mib']['RssFile']:.0f}"),
]  # fmt: skip


def table(write: dict[str, Any], probes: dict[str, Any]) -> str:
    lines = ["| measure | " + " | ".join(write) + " |", "|---|" + "---:|" * len(write)]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(write[c], probes[c]) for c in write) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transfers", type=int, default=2_000_000, help="written to each store")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100K transfers")
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    parser.add_argument("--seed", type=int, default=7, help="the workload generator's seed")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--dir", type=Path, help="work directory (default: a temporary one, deleted)"
    )
    parser.add_argument("--probe", choices=CANDIDATES, help=argparse.SUPPRESS)  # the child's role
    return parser.parse_args()  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.probe:
        print(json.dumps(probe(args)))
        return
    own_dir, args.dir = args.dir is None, args.dir or Path(tempfile.mkdtemp(prefix="store_choice-"))
    args.transfers = 100_000 if args.quick else args.transfers
    try:
        workload = Workload(args.seed)
        write = write_phase(args, workload)
        (args.dir / "workload.pickle").write_bytes(pickle.dumps(workload))
        probes = {}
        for candidate in args.candidates:  # a fresh process each, so its RSS is its own
            child = [sys.executable, __file__, "--probe", candidate, "--dir", str(args.dir),
                     "--seed", str(args.seed)]  # fmt: skip
            out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
            probes[candidate] = json.loads(out.splitlines()[-1])
    finally:
        if own_dir:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(table(write, probes))
    machine = {"nproc": os.cpu_count(), "python": platform.python_version(),
               "sqlite": sqlite3.sqlite_version, "lmdb": ".".join(map(str, lmdb.version()))}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "transfers": args.transfers,
                                         "write": write, "probe": probes}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
