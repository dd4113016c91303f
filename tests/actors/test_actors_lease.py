"""The lease rule itself: a primary serves only while its backup grants it a lease, and
a promoted backup serves nothing until the lease it granted is over (PacificA's rule;
docs/ARCHITECTURE.md, "Why an old primary cannot act").

Real sockets, files and fsync, no Ray and no controller: the primary's lease comes from
its backup alone. The backup that stops answering is a process of its own, stopped with
SIGSTOP. (A paused *primary* is ``tests/cluster/test_failover.py``'s
``test_paused_old_primary_is_fenced_after_promotion``, on a real cluster.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.actors.test_actors_replication import SHARD, SHARD_COUNT, attach_backup
from tests.support.orders import ids_on, topup
from tests.support.services import apply_orders, create_accounts
from tokpay.actors.channel import NotPrimary
from tokpay.actors.protocol import ReplicaSpec, encode
from tokpay.actors.replica_host import ReplicaHost
from tokpay.actors.replication import ReplicationFailed
from tokpay.actors.shard import ShardService
from tokpay.actors.timing import LEASE_MARGIN_SECONDS, LEASE_SECONDS

READY_SECONDS = 10.0
"""A fresh primary serves after its start hold (a lease and a margin) and one grant."""


def primary_at(root: Path, epoch: int = 1) -> ReplicaHost[ShardService]:
    return ReplicaHost(
        "primary",
        ReplicaSpec(name=root.name, epoch=epoch, role="primary"),
        root,
        lambda options: ShardService(SHARD, SHARD_COUNT, root.parent, **options),
        service_class=ShardService,
        fsync=True,
    )


def read(host: ReplicaHost[ShardService], account: str) -> tuple[float, float]:
    """One balance read as the shard actor serves it: (when it began, when it ended).
    Raises ``NotPrimary`` when the host may not serve."""
    began = time.monotonic()
    with host.lock:
        host.readable().balances(encode([account]))
        host.check_lease_after_read()
    return began, time.monotonic()


def wait_serving(host: ReplicaHost[ShardService], account: str) -> tuple[float, float]:
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            return read(host, account)
        except NotPrimary:
            assert time.monotonic() < deadline, "the primary never got its lease"
            time.sleep(0.01)


@pytest.fixture
def stoppable_backup(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[object]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.lease_backup", str(tmp_path / "b"), "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        host, port, token = json.loads(process.stdout.readline())
        yield process, [host, port, bytes.fromhex(token)]
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(timeout=30)


def test_a_primary_whose_backup_stops_answering_stops_serving_within_its_lease(
    tmp_path: Path, stoppable_backup: tuple[subprocess.Popen[str], list[object]]
) -> None:
    process, address = stoppable_backup
    primary = primary_at(tmp_path / "p")
    with primary.lock:
        primary.attach_backup(2, tuple(address))  # type: ignore[arg-type]
    primary.keep_lease()
    (account,) = ids_on(SHARD, SHARD_COUNT, 1, "lease")
    assert primary.service is not None
    create_accounts(primary.service, [account])
    wait_serving(primary, account)

    os.kill(process.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    served: list[float] = []
    refused: list[float] = []
    while time.monotonic() < stopped_at + LEASE_SECONDS + 1.0:
        try:
            served.append(read(primary, account)[0])
        except NotPrimary:
            refused.append(time.monotonic())
        time.sleep(0.005)
    # Every read that was let in began before the last ask the backup answered + a lease.
    assert refused, "the primary kept serving with its backup stopped"
    assert not served or max(served) < stopped_at + LEASE_SECONDS
    assert not served or max(served) < min(refused), "it served again without a grant"
    # Writes need the backup anyway: refused, and the ledger unchanged.
    with pytest.raises((NotPrimary, ReplicationFailed)), primary.lock:
        apply_orders(primary.leased(), [topup(account, 5, id="t-1", shard_count=SHARD_COUNT)])

    os.kill(process.pid, signal.SIGCONT)
    # The backup answers again: the lease is renewed and reads resume.
    wait_serving(primary, account)


def test_a_promoted_backup_serves_only_after_the_lease_it_granted(tmp_path: Path) -> None:
    old = primary_at(tmp_path / "p")
    backup = attach_backup(old, tmp_path / "b", epoch=2)
    old.keep_lease()
    (account,) = ids_on(SHARD, SHARD_COUNT, 1, "promote")
    assert old.service is not None
    create_accounts(old.service, [account])
    leased_at, _ = wait_serving(old, account)

    promoted = backup.host
    with promoted.lock:
        assert promoted.promote(3)
    promoted_at = time.monotonic()
    attach_backup(promoted, tmp_path / "c", epoch=3, wait=False)
    promoted.keep_lease()
    # Both try to serve, turn about, as fast as they can: their answers never overlap.
    old_ends: list[float] = []
    new_begins: list[float] = []
    while not new_begins:
        assert time.monotonic() < promoted_at + READY_SECONDS, "the new primary never served"
        with contextlib.suppress(NotPrimary):
            old_ends.append(read(old, account)[1])
        with contextlib.suppress(NotPrimary):
            new_begins.append(read(promoted, account)[0])
    assert not old_ends or max(old_ends) < new_begins[0]
    # It held back for the lease it granted (one that was valid at ``leased_at``) plus
    # the margin, however soon its own backup granted it one.
    assert new_begins[0] >= leased_at + LEASE_MARGIN_SECONDS
    # The old primary can make nothing durable: its backup refuses its epoch.
    with pytest.raises((NotPrimary, ReplicationFailed)), old.lock:
        apply_orders(old.leased(), [topup(account, 5, id="t-old", shard_count=SHARD_COUNT)])
    with promoted.lock:
        outcome = apply_orders(
            promoted.leased(), [topup(account, 5, id="t-new", shard_count=SHARD_COUNT)]
        )
    assert outcome[0].transfer is not None
