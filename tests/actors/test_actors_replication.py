"""Replication between two ShardServices over the real channel (sockets, files, fsync).

No Ray here: each copy is the replica host (``ReplicaHost``) with a ShardService, the
backup behind a ChannelServer, as the actor has them, so the shipping, epoch fencing and
the install (a copy of the primary's store streamed on a thread while writes go on) are
tested on their own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.orders import CURRENCY, ids_on, pay, topup
from tests.support.services import apply_orders, create_accounts
from tokpay.actors.channel import ChannelServer, NotPrimary
from tokpay.actors.protocol import ReplicaSpec, ShippedRecord, encode
from tokpay.actors.replica_host import ReplicaHost
from tokpay.actors.replication import InstallReceiver, ReplicatedLog
from tokpay.actors.shard import ShardService

SHARD = 0
SHARD_COUNT = 2


class BackupHarness:
    """A backup exactly as ShardActor runs one: the replica host behind a channel."""

    def __init__(self, root: Path, epoch: int) -> None:
        spec = ReplicaSpec(name=root.name, epoch=epoch, role="backup")
        self.host = ReplicaHost(
            f"backup {root.name}",
            spec,
            root,
            lambda options: ShardService(SHARD, SHARD_COUNT, root.parent, **options),
            service_class=ShardService,
            fsync=True,
        )
        self.server = ChannelServer(self.dispatch)

    def dispatch(self, method: str, payload: bytes) -> bytes:
        return self.host.serve_locked(method, payload)

    @property
    def service(self) -> ShardService | None:
        return self.host.service

    def installed(self) -> bool:
        return self.host.status().installed

    def wait_installed(self, seconds: float = 10) -> ShardService:
        deadline = time.monotonic() + seconds
        while not self.installed():
            assert time.monotonic() < deadline, "the state copy never arrived"
            time.sleep(0.01)
        assert self.service is not None
        return self.service

    def promote(self) -> None:
        """Become a primary at the next epoch: from now on no record is accepted."""
        with self.host.lock:
            assert self.host.promote(self.host.epoch + 1)


@pytest.fixture
def primary_host(tmp_path: Path) -> ReplicaHost[ShardService]:
    """A primary's host; its service must ship each record to a backup before it answers."""
    root = tmp_path / "p"
    return ReplicaHost(
        "primary",
        ReplicaSpec(name="p", epoch=1, role="primary"),
        root,
        lambda options: ShardService(SHARD, SHARD_COUNT, root.parent, **options),
        service_class=ShardService,
        fsync=True,
    )


@pytest.fixture
def primary(primary_host: ReplicaHost[ShardService]) -> ShardService:
    assert primary_host.service is not None
    return primary_host.service


def attach_backup(
    host: ReplicaHost[ShardService], root: Path, epoch: int, *, wait: bool = True
) -> BackupHarness:
    """A new backup in ``root``, attached as the controller does (through the primary's
    host); with ``wait``, once its state copy is in."""
    backup = BackupHarness(root, epoch)
    with host.lock:
        host.attach_backup(epoch, backup.server.address)
    if wait:
        backup.wait_installed()
    return backup


def test_writes_wait_for_a_backup_and_change_nothing(primary: ShardService) -> None:
    with pytest.raises(NotPrimary):
        create_accounts(primary, ids_on(SHARD, SHARD_COUNT, 1, "a"))
    assert primary.ledger.accounts == {}
    assert primary.log.last_sequence == 0


def test_backup_follows_primary_byte_for_byte(
    tmp_path: Path, primary_host: ReplicaHost[ShardService], primary: ShardService
) -> None:
    accounts = ids_on(SHARD, SHARD_COUNT, 6, "acct")
    backup = attach_backup(primary_host, tmp_path / "b", epoch=2)
    create_accounts(primary, accounts)
    topups = [topup(a, 1_000, id=f"t-{a}", shard_count=SHARD_COUNT) for a in accounts]
    assert all(o.transfer for o in apply_orders(primary, topups))
    for n in range(20):
        apply_orders(primary, [pay(accounts[n % 6], [(accounts[(n + 1) % 6], 7)], id=f"p-{n}")])
    assert backup.service is not None
    assert backup.service.snapshot_payload() == primary.snapshot_payload()
    assert backup.service.log.last_sequence == primary.log.last_sequence
    # The backup's own files rebuild the same state (it fsynced what it acknowledged).
    backup.service.close()
    reopened = ShardService(SHARD, SHARD_COUNT, tmp_path, root=tmp_path / "b")
    assert reopened.snapshot_payload() == primary.snapshot_payload()


def test_promoted_backup_fences_the_old_primary(
    tmp_path: Path, primary_host: ReplicaHost[ShardService], primary: ShardService
) -> None:
    accounts = ids_on(SHARD, SHARD_COUNT, 2, "f")
    backup = attach_backup(primary_host, tmp_path / "b", epoch=2)
    create_accounts(primary, accounts)
    apply_orders(primary, [topup(accounts[0], 500, id="t0", shard_count=SHARD_COUNT)])
    before = backup.service.snapshot_payload() if backup.service else b""
    backup.promote()
    # The old primary applies the batch locally but cannot get it acknowledged.
    with pytest.raises(NotPrimary):
        apply_orders(primary, [pay(accounts[0], [(accounts[1], 100)], id="zombie")])
    assert primary.log.broken is not None
    # From now on it takes no write at all; the promoted copy never saw the batch.
    with pytest.raises(NotPrimary):
        apply_orders(primary, [pay(accounts[0], [(accounts[1], 1)], id="zombie-2")])
    assert backup.service is not None
    assert backup.service.snapshot_payload() == before
    assert backup.service.ledger.transfer("zombie") is None


def test_backup_refuses_records_of_another_epoch(
    tmp_path: Path, primary_host: ReplicaHost[ShardService], primary: ShardService
) -> None:
    backup = attach_backup(primary_host, tmp_path / "b", epoch=3)
    assert backup.service is not None
    stale = ShippedRecord(epoch=2, sequence=1, payload=b"")
    with pytest.raises(NotPrimary):
        backup.service.follow(encode(stale))
    assert backup.service.log.last_sequence == 0


def test_new_backup_carries_a_batch_the_old_one_never_acknowledged(
    tmp_path: Path, primary_host: ReplicaHost[ShardService], primary: ShardService
) -> None:
    accounts = ids_on(SHARD, SHARD_COUNT, 2, "n")
    first = attach_backup(primary_host, tmp_path / "b1", epoch=2)
    create_accounts(primary, accounts)
    first.promote()  # stands for a lost backup: it answers nothing useful
    lost_ack = [topup(accounts[0], 900, id="lost-ack", shard_count=SHARD_COUNT)]
    with pytest.raises(NotPrimary):
        apply_orders(primary, lost_ack)
    second = attach_backup(primary_host, tmp_path / "b2", epoch=3)
    assert primary.log.broken is None
    # The client's retry with the same id is answered from the ledger, once.
    (outcome,) = apply_orders(primary, lost_ack)
    assert outcome.replayed and outcome.transfer is not None
    assert second.service is not None
    assert second.service.snapshot_payload() == primary.snapshot_payload()
    assert second.service.ledger.accounts[accounts[0]].balance == 900
    assert sum(a.balance for a in second.service.ledger.accounts.values()) == 0
    assert CURRENCY in {a.currency for a in second.service.ledger.accounts.values()}


class HeldBackup(BackupHarness):
    """A backup whose state copy is held back until ``release``: records still arrive."""

    def __init__(self, root: Path, epoch: int) -> None:
        super().__init__(root, epoch)
        self.release = threading.Event()

    def dispatch(self, method: str, payload: bytes) -> bytes:
        if method == "install_state":
            assert self.release.wait(10), "the test never released the state copy"
        return super().dispatch(method, payload)


@pytest.mark.parametrize("broken", [False, True])
def test_a_new_backup_of_a_broken_log_keeps_a_record_before_its_copy_lands(
    tmp_path: Path, primary_host: ReplicaHost[ShardService], primary: ShardService, broken: bool
) -> None:
    """After a batch the old backup never acknowledged, the primary answers from it (the
    retry below logs nothing). Until the state copy lands it is on the primary's disk only,
    so the new backup must not look as if it kept nothing: that would prove the old backup
    complete to the copy choice, and a failover to it would drop what was answered."""
    accounts = ids_on(SHARD, SHARD_COUNT, 2, "k")
    first = attach_backup(primary_host, tmp_path / "b1", epoch=2)
    create_accounts(primary, accounts)
    order = [topup(accounts[0], 700, id="only-here", shard_count=SHARD_COUNT)]
    if broken:
        first.promote()  # stands for a lost backup
        with pytest.raises(NotPrimary):
            apply_orders(primary, order)
    second = HeldBackup(tmp_path / "b2", 3)
    with primary_host.lock:
        primary_host.attach_backup(3, second.server.address)
    if broken:
        (outcome,) = apply_orders(primary, order)
        assert outcome.replayed and outcome.transfer is not None
    status = second.host.status()
    assert not status.installed
    # Unbroken, everything the primary shows is on the old backup too: nothing to keep.
    assert status.kept_nothing is not broken
    second.release.set()
    installed = second.wait_installed()
    assert installed.snapshot_payload() == primary.snapshot_payload()


def test_a_single_copy_log_needs_no_backup(tmp_path: Path) -> None:
    service = ShardService(SHARD, SHARD_COUNT, tmp_path)
    assert isinstance(service.log, ReplicatedLog) and not service.log.required
    create_accounts(service, ids_on(SHARD, SHARD_COUNT, 1, "s"))
    assert service.log.last_sequence == 1


def test_state_copy_travels_in_chunks(
    tmp_path: Path,
    primary_host: ReplicaHost[ShardService],
    primary: ShardService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tokpay.actors.replication as replication

    accounts = ids_on(SHARD, SHARD_COUNT, 20, "chunk")
    _first = attach_backup(primary_host, tmp_path / "b1", epoch=2)  # acknowledges the writes
    create_accounts(primary, accounts)
    apply_orders(primary, [topup(a, 10, id=f"t-{a}", shard_count=SHARD_COUNT) for a in accounts])
    # A tiny chunk size: the install below takes many frames, reassembled exactly.
    monkeypatch.setattr(replication, "INSTALL_CHUNK_BYTES", 97)
    frames: list[str] = []
    receive = InstallReceiver.receive

    def counting(self: InstallReceiver, method: str, *args: Any) -> tuple[Path, int] | None:
        frames.append(method)
        return receive(self, method, *args)

    monkeypatch.setattr(InstallReceiver, "receive", counting)
    second = attach_backup(primary_host, tmp_path / "b2", epoch=3, wait=True)
    assert frames.count("install_chunk") > 20
    assert frames[0] == "install_state" and frames[-1] == "install_end"
    assert second.wait_installed().snapshot_payload() == primary.snapshot_payload()


def test_writes_go_on_while_the_state_copy_travels(
    tmp_path: Path,
    primary_host: ReplicaHost[ShardService],
    primary: ShardService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy is made and sent off the lock: records acknowledged meanwhile are kept by
    the backup, which reports installed only once the copy is in, then applies them."""
    import tokpay.actors.replica_host as replica_host

    accounts = ids_on(SHARD, SHARD_COUNT, 4, "early")
    _first = attach_backup(primary_host, tmp_path / "b1", epoch=2)
    create_accounts(primary, accounts)
    apply_orders(primary, [topup(a, 50, id=f"t-{a}", shard_count=SHARD_COUNT) for a in accounts])
    release = threading.Event()
    real_send = replica_host.send_state

    def held_send(*args: Any) -> None:
        assert release.wait(10)
        real_send(*args)

    monkeypatch.setattr(replica_host, "send_state", held_send)
    second = attach_backup(primary_host, tmp_path / "b2", epoch=3, wait=False)
    started = time.monotonic()
    for n in range(10):
        order = pay(accounts[n % 4], [(accounts[(n + 1) % 4], 1)], id=f"m{n}")
        assert apply_orders(primary, [order])[0].error is None
    assert time.monotonic() - started < 5, "writes waited for the state copy"
    assert not second.installed() and second.service is None
    release.set()
    service = second.wait_installed()
    assert service.snapshot_payload() == primary.snapshot_payload()
    assert service.log.last_sequence == primary.log.last_sequence
    # And it follows from there.
    apply_orders(primary, [pay(accounts[0], [(accounts[1], 2)], id="after")])
    assert service.snapshot_payload() == primary.snapshot_payload()
