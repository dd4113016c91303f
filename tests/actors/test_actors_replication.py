"""Replication between two ShardServices over the real channel (sockets, files, fsync).

No Ray here: a backup is a ShardService behind a ChannelServer, as the actor has it,
so the shipping, epoch fencing and snapshot install are tested on their own.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.actors.test_actors_service import (
    CURRENCY,
    SHARD,
    SHARD_COUNT,
    create,
    ids_on,
    pay,
    topup,
)
from tokpay.actors.channel import ChannelServer, NotPrimary
from tokpay.actors.protocol import ShippedRecord, decode, encode
from tokpay.actors.replication import InstallReceiver, ReplicatedLog
from tokpay.actors.shard import ShardService
from tokpay.ledger.model import TransferOutcome


class BackupHarness:
    """A backup replica as ShardActor runs it: install, then follow records of its epoch."""

    def __init__(self, root: Path, epoch: int) -> None:
        self.root = root
        self.epoch = epoch
        self.promoted = False
        self.service: ShardService | None = None
        self.lock = threading.Lock()
        self.receiver = InstallReceiver()
        self.server = ChannelServer(self.dispatch)

    def dispatch(self, method: str, payload: bytes) -> bytes:
        with self.lock:
            if self.promoted:
                raise NotPrimary("promoted: no longer a backup")
            if method == "install_begin":
                self.receiver.begin(payload, self.epoch)
                return b""
            if method == "install_chunk":
                self.receiver.chunk(payload)
                return b""
            if method == "install_end":
                self.service = ShardService.install(
                    SHARD, SHARD_COUNT, self.root, self.receiver.end(), fsync=True
                )
                return b""
            assert self.service is not None
            return self.service.follow(payload)


def primary_service(root: Path) -> ShardService:
    return ShardService(SHARD, SHARD_COUNT, root.parent, replicated=True, root=root)


def apply(service: ShardService, orders: list) -> list[TransferOutcome]:  # type: ignore[type-arg]
    outcomes: list[TransferOutcome] = decode(
        service.apply_orders(encode(orders)), list[TransferOutcome]
    )
    return outcomes


def test_writes_wait_for_a_backup_and_change_nothing(tmp_path: Path) -> None:
    primary = primary_service(tmp_path / "p")
    with pytest.raises(NotPrimary):
        create(primary, ids_on(SHARD, 1, "a"))
    assert primary.ledger.accounts == {}
    assert primary.log.last_sequence == 0


def test_backup_follows_primary_byte_for_byte(tmp_path: Path) -> None:
    primary = primary_service(tmp_path / "p")
    accounts = ids_on(SHARD, 6, "acct")
    backup = BackupHarness(tmp_path / "b", epoch=2)
    primary.log.attach(2, backup.server.address, primary.snapshot_payload())
    create(primary, accounts)
    assert all(o.transfer for o in apply(primary, [topup(a, 1_000, f"t-{a}") for a in accounts]))
    for n in range(20):
        apply(primary, [pay(accounts[n % 6], [(accounts[(n + 1) % 6], 7)], f"p-{n}")])
    assert backup.service is not None
    assert backup.service.snapshot_payload() == primary.snapshot_payload()
    assert backup.service.log.last_sequence == primary.log.last_sequence
    # The backup's own files rebuild the same state (it fsynced what it acknowledged).
    backup.service.close()
    reopened = ShardService(SHARD, SHARD_COUNT, tmp_path, root=tmp_path / "b")
    assert reopened.snapshot_payload() == primary.snapshot_payload()


def test_promoted_backup_fences_the_old_primary(tmp_path: Path) -> None:
    primary = primary_service(tmp_path / "p")
    accounts = ids_on(SHARD, 2, "f")
    backup = BackupHarness(tmp_path / "b", epoch=2)
    primary.log.attach(2, backup.server.address, primary.snapshot_payload())
    create(primary, accounts)
    apply(primary, [topup(accounts[0], 500, "t0")])
    before = backup.service.snapshot_payload() if backup.service else b""
    backup.promoted = True
    # The old primary applies the batch locally but cannot get it acknowledged.
    with pytest.raises(NotPrimary):
        apply(primary, [pay(accounts[0], [(accounts[1], 100)], "zombie")])
    assert primary.log.broken is not None
    # From now on it takes no write at all; the promoted copy never saw the batch.
    with pytest.raises(NotPrimary):
        apply(primary, [pay(accounts[0], [(accounts[1], 1)], "zombie-2")])
    assert backup.service is not None
    assert backup.service.snapshot_payload() == before
    assert backup.service.ledger.transfer("zombie") is None


def test_backup_refuses_records_of_another_epoch(tmp_path: Path) -> None:
    primary = primary_service(tmp_path / "p")
    backup = BackupHarness(tmp_path / "b", epoch=3)
    primary.log.attach(3, backup.server.address, primary.snapshot_payload())
    assert backup.service is not None
    stale = ShippedRecord(epoch=2, sequence=1, payload=b"")
    with pytest.raises(NotPrimary):
        backup.service.follow(encode(stale))
    assert backup.service.log.last_sequence == 0


def test_new_backup_carries_a_batch_the_old_one_never_acknowledged(tmp_path: Path) -> None:
    primary = primary_service(tmp_path / "p")
    accounts = ids_on(SHARD, 2, "n")
    first = BackupHarness(tmp_path / "b1", epoch=2)
    primary.log.attach(2, first.server.address, primary.snapshot_payload())
    create(primary, accounts)
    first.promoted = True  # stands for a lost backup: it answers nothing useful
    with pytest.raises(NotPrimary):
        apply(primary, [topup(accounts[0], 900, "lost-ack")])
    second = BackupHarness(tmp_path / "b2", epoch=3)
    primary.log.attach(3, second.server.address, primary.snapshot_payload())
    assert primary.log.broken is None
    # The client's retry with the same id is answered from the ledger, once.
    (outcome,) = apply(primary, [topup(accounts[0], 900, "lost-ack")])
    assert outcome.replayed and outcome.transfer is not None
    assert second.service is not None
    assert second.service.snapshot_payload() == primary.snapshot_payload()
    assert second.service.ledger.accounts[accounts[0]].balance == 900
    assert sum(a.balance for a in second.service.ledger.accounts.values()) == 0
    assert CURRENCY in {a.currency for a in second.service.ledger.accounts.values()}


def test_a_single_copy_log_needs_no_backup(tmp_path: Path) -> None:
    service = ShardService(SHARD, SHARD_COUNT, tmp_path)
    assert isinstance(service.log, ReplicatedLog) and not service.log.required
    create(service, ids_on(SHARD, 1, "s"))
    assert service.log.last_sequence == 1


def test_snapshot_travels_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tokpay.actors.replication as replication

    primary = primary_service(tmp_path / "p")
    accounts = ids_on(SHARD, 20, "chunk")
    first = BackupHarness(tmp_path / "b1", epoch=2)
    primary.log.attach(2, first.server.address, primary.snapshot_payload())
    create(primary, accounts)
    apply(primary, [topup(a, 10, f"t-{a}") for a in accounts])
    # A tiny chunk size: the install below takes many frames, reassembled exactly.
    monkeypatch.setattr(replication, "INSTALL_CHUNK_BYTES", 97)
    assert len(primary.snapshot_payload()) > 20 * 97
    second = BackupHarness(tmp_path / "b2", epoch=3)
    primary.log.attach(3, second.server.address, primary.snapshot_payload())
    assert second.service is not None
    assert second.service.snapshot_payload() == primary.snapshot_payload()
