"""A shard's store after a crash: the log is the truth, the store catches up, and a store
file that cannot be trusted stops the shard at open with a clear error.

The crash is real: a child process writes through a ``ShardService`` until the store
write of one record fails, and the service ends the process (``os._exit``) after the
record's log fsync and before its store write, as a kill at that instant would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.orders import account_specs, ids_on, pay, topup
from tests.support.services import apply_orders, create_accounts
from tokpay.actors.protocol import decode
from tokpay.actors.replicated_service import STOP_EXIT_CODE
from tokpay.actors.shard import STORE_WRITE_RECORDS, ShardService
from tokpay.ledger.errors import ErrorCode, InvariantViolation
from tokpay.ledger.limits import MAX_PAGE_SIZE
from tokpay.ledger.model import Decision, Prepare, Transfer
from tokpay.ledger.shard_ledger import ShardLedger
from tokpay.store.shard_store import STORE_FILE, ShardStore, StoreError

T0 = 1_700_000_000_000_000

SHARD = 0
SHARD_COUNT = 2
REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import tokpay.actors.shard
    from tests.support.orders import ids_on, pay, topup
    from tests.support.services import apply_orders, create_accounts
    from tokpay.actors.shard import ShardService

    tokpay.actors.shard.STORE_WRITE_RECORDS = 2  # the failing write holds records 3 and 4
    data_dir = Path(sys.argv[1])
    service = ShardService(0, 2, data_dir)
    users = ids_on(0, 2, 4, "k")
    create_accounts(service, users)
    apply_orders(service, [topup(u, 100, id=f"top-{u}", shard_count=2) for u in users])
    apply_orders(service, [pay(users[0], [(users[1], 7)], id="before")])
    real_write = service.store.write

    def failing_write(sequence, changes):
        service.store.write = real_write  # fails once: this write only
        raise OSError("store write lost (simulated kill after the log fsync)")

    service.store.write = failing_write
    apply_orders(service, [pay(users[0], [(users[2], 5), (users[3], 4)], id="crash")])
    print("not reached: the service must stop when its store write fails")
    """
)


def open_service(data_dir: Path) -> ShardService:
    return ShardService(SHARD, SHARD_COUNT, data_dir)


def history(service: ShardService, account_id: str) -> list[tuple[str, int, int]]:
    """(transfer id, effect, balance after) of every entry, oldest first."""
    items: list[Any] = []
    cursor: int | None = None
    while True:
        page = decode(service.history(account_id, MAX_PAGE_SIZE, cursor), Any)["page"]
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return [(t["order"]["id"], effect, after) for t, effect, after in reversed(items)]


def test_killed_between_log_fsync_and_store_write_recovers_the_transfer_once(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == STOP_EXIT_CODE, child.stderr[-2000:]
    assert "not reached" not in child.stdout

    service = open_service(tmp_path)
    # Two records made it to the store; the third and fourth only to the log, replayed.
    assert service.store.applied_sequence == service.last_sequence == 4
    users = ids_on(SHARD, SHARD_COUNT, 4, "k")
    crash = service.ledger.transfer("crash")
    assert crash is not None and crash.order.debit == users[0]
    assert service.store.transfers == 4 + 2  # four top-ups, "before" and "crash", once each
    assert history(service, users[0]) == [
        (f"top-{users[0]}", 100, 100),
        ("before", -7, 93),
        ("crash", -9, 84),
    ]
    assert history(service, users[2]) == [(f"top-{users[2]}", 100, 100), ("crash", 5, 105)]
    assert service.all_balances()[users[0]] == 84
    assert service.currency_sums() == {"USD": 0}
    # The client's retry after the crash is a replay, not a second transfer.
    retry = apply_orders(service, [pay(users[0], [(users[2], 5), (users[3], 4)], id="crash")])
    assert retry[0].replayed and service.store.transfers == 6
    service.close()


WORKLOAD = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    from tests.store.test_store_recovery import write_some

    write_some(Path(sys.argv[1]), close=False)
    os._exit(9)  # killed: no close, so the store's own WAL file is left as it was
    """
)


def write_some(data_dir: Path, *, close: bool = True) -> None:
    service = open_service(data_dir)
    users = ids_on(SHARD, SHARD_COUNT, 20, "t")
    create_accounts(service, users)
    apply_orders(service, [topup(u, 50, id=f"top-{u}", shard_count=SHARD_COUNT) for u in users])
    for round_ in range(10):
        apply_orders(
            service,
            [pay(users[i], [(users[i - 1], 1)], id=f"p{round_}-{i}") for i in range(20)],
        )
    service.write_snapshot()
    apply_orders(service, [pay(users[i], [(users[i - 2], 2)], id=f"late-{i}") for i in range(20)])
    service.write_store()  # the late rows in the store's own WAL, not only in the log
    if close:
        service.close()


def store_path(data_dir: Path) -> Path:
    return data_dir / f"shard-{SHARD}" / STORE_FILE


def test_a_truncated_store_file_stops_the_shard_at_open(tmp_path: Path) -> None:
    write_some(tmp_path)
    path = store_path(tmp_path)
    size = path.stat().st_size
    assert size > 16 * 1024
    with open(path, "r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(StoreError, match=STORE_FILE):
        open_service(tmp_path)


def test_a_store_file_with_garbage_pages_stops_the_shard_at_open(tmp_path: Path) -> None:
    write_some(tmp_path)
    path = store_path(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        # Every page but the header page: torn writes of a lost disk cache.
        file.seek(4096)
        file.write(os.urandom(size - 4096))
    with pytest.raises(StoreError, match=STORE_FILE):
        open_service(tmp_path)


def test_a_store_file_that_is_not_a_database_stops_the_shard_at_open(tmp_path: Path) -> None:
    write_some(tmp_path)
    store_path(tmp_path).write_bytes(b"\0" * 100 + os.urandom(8000))
    with pytest.raises(StoreError, match=STORE_FILE):
        open_service(tmp_path)


def test_another_shards_store_is_refused(tmp_path: Path) -> None:
    write_some(tmp_path)
    os.rename(tmp_path / f"shard-{SHARD}", tmp_path / "shard-1")
    with pytest.raises(StoreError, match="belongs to shard 0/2"):
        ShardService(1, SHARD_COUNT, tmp_path)


def test_a_store_ahead_of_its_log_is_refused(tmp_path: Path) -> None:
    """A lost or replaced log: the store holds records the log does not; never served."""
    write_some(tmp_path)
    for segment in (tmp_path / f"shard-{SHARD}" / "wal").iterdir():
        segment.unlink()
    with pytest.raises(InvariantViolation, match="refusing to start"):
        open_service(tmp_path)


def test_a_torn_tail_of_the_stores_wal_is_replayed_from_the_log(tmp_path: Path) -> None:
    """Killed with commits in the store's own WAL file, whose last frame is then torn:
    SQLite drops the torn commit and the shard's log brings it back."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", WORKLOAD, str(tmp_path / "killed")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr[-2000:]
    wal = Path(f"{store_path(tmp_path / 'killed')}-wal")
    size = wal.stat().st_size
    assert size > 4096, "the kill left no commits in the store's WAL"
    with open(wal, "r+b") as file:
        file.truncate(size - 1_000)  # mid-frame: the newest commit is torn

    write_some(tmp_path / "clean")  # the same workload, never interrupted
    killed = open_service(tmp_path / "killed")
    clean = open_service(tmp_path / "clean")
    assert killed.all_balances() == clean.all_balances()
    assert killed.store.transfers == clean.store.transfers == 20 + 10 * 20 + 20
    for user in ids_on(SHARD, SHARD_COUNT, 20, "t"):
        assert history(killed, user) == history(clean, user)
    killed.close()
    clean.close()


# -- the store written every STORE_WRITE_RECORDS records ----------------------------------


def test_records_reach_the_store_in_groups_and_reads_never_miss_them(tmp_path: Path) -> None:
    service = ShardService(0, 1, tmp_path)
    a, b = ids_on(0, 1, 2, "w")
    create_accounts(service, [a, b])
    apply_orders(service, [topup(a, 10_000, id="top", shard_count=1)])
    lags = []
    for n in range(2 * STORE_WRITE_RECORDS + 3):
        (outcome,) = apply_orders(service, [pay(a, [(b, 1)], id=f"w-{n}")])
        assert outcome.transfer is not None and not outcome.replayed
        lags.append(service.last_sequence - service.store.applied_sequence)
        # Every transfer so far replays and binds its id, on disk or not yet.
        (again,) = apply_orders(service, [pay(a, [(b, 1)], id=f"w-{n // 2}")])
        assert again.replayed
        (other,) = apply_orders(service, [pay(a, [(b, 2)], id=f"w-{n // 2}")])
        assert other.error == ErrorCode.TRANSFER_ID_CONFLICT
    assert max(lags) == STORE_WRITE_RECORDS - 1 and 0 in lags  # bounded, and written
    expected = [("top", 10_000, 10_000)] + [
        (f"w-{n}", -1, 10_000 - n - 1) for n in range(2 * STORE_WRITE_RECORDS + 3)
    ]
    assert history(service, a) == expected
    service.close()
    reopened = ShardService(0, 1, tmp_path)
    assert reopened.store.applied_sequence == reopened.last_sequence
    assert history(reopened, a) == expected
    assert reopened.currency_sums() == {"USD": 0}
    reopened.close()


def test_a_backups_copy_holds_every_record_written_so_far(tmp_path: Path) -> None:
    """A new backup keeps only the records after its attach: the copy it starts from must
    hold every one before, written or not yet when the copy was asked for."""
    service = ShardService(0, 1, tmp_path)
    a, b = ids_on(0, 1, 2, "c")
    create_accounts(service, [a, b])
    apply_orders(service, [topup(a, 100, id="top", shard_count=1)])
    apply_orders(service, [pay(a, [(b, 3)], id="c-1")])
    assert service.store.applied_sequence < service.last_sequence
    copy = tmp_path / "copy.sqlite"
    assert service.export_state()(copy) == service.last_sequence
    copied = ShardStore(tmp_path / "copied", 0, 1)
    copied.close()
    copy.replace(tmp_path / "copied" / "store.sqlite")
    copied = ShardStore(tmp_path / "copied", 0, 1)
    assert copied.transfer("c-1") is not None
    assert {x.id: x.balance for x in copied.accounts()}[b] == 3
    copied.close()
    service.close()


def test_holds_folded_over_several_records_reach_the_store_as_their_last_state(
    tmp_path: Path,
) -> None:
    store = ShardStore(tmp_path, 0, 2)
    ledger = ShardLedger(0, 2, disk=store)
    payer = ids_on(0, 2, 1, "h")[0]
    remote = ids_on(1, 2, 1, "r")[0]
    ledger.create_accounts(account_specs([payer]), T0)
    ledger.apply_orders([topup(payer, 100, id="top", shard_count=2)], T0)
    order = pay(payer, [(remote, 10)], id="h-1")
    other = pay(payer, [(remote, 20)], id="h-2")

    def prepare(txid: str, body: Transfer) -> None:
        (vote,), _, _ = ledger.prepare([Prepare(txid=txid, transfer=body)], T0)
        assert vote.ok

    prepare("tx-1", Transfer(order=order, created_at=T0))
    store.write(1, ledger.take_pending())  # tx-1 held on disk
    # In one window: tx-1 released then held again, tx-2 held then released.
    ledger.decide([Decision("tx-1", False)])
    prepare("tx-1", Transfer(order=order, created_at=T0 + 1))
    prepare("tx-2", Transfer(order=other, created_at=T0))
    ledger.decide([Decision("tx-2", False)])
    store.write(4, ledger.take_pending())
    held = {p.txid: p.transfer.created_at for p in store.prepared()}
    assert held == {"tx-1": T0 + 1}
    reloaded = ShardLedger(0, 2, disk=store)
    reloaded.load(list(store.accounts()), list(store.prepared()))
    assert reloaded.accounts[payer].held_debit == 10
    store.close()
