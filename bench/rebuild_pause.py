"""How long writes pause while a new backup is rebuilt from a primary with a big history.

One process, no Ray, real files and fsync: a primary ``ReplicaHost`` with a
``ShardService`` and backups each behind a ``ChannelServer``, as the shard actor runs
them. The bench builds the primary's history (a single copy, then reopened as a
replicated primary and given a first backup), starts a writer thread that submits
batches of ``--writer-batch`` orders through the host as the actor does (under the
host's lock, through ``leased()``, the lease asked of its backup as in a cluster), measures
the writer's latency for ``--phase-seconds`` with nothing else going on, then attaches
a new backup at the next epoch (a fresh directory: the primary copies its store and
streams it on a thread) and measures again during that rebuild and after it. At the end
the new backup must equal the primary and the balances must sum to zero.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokpay.actors.channel import ChannelServer, NotPrimary
from tokpay.actors.protocol import ReplicaSpec, encode
from tokpay.actors.replica_host import ReplicaHost
from tokpay.actors.replicated_service import LogOptions
from tokpay.actors.shard import ShardService
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import AccountSpec, Credit, TransferKind, TransferOrder
from tokpay.ledger.model import funding_account_id as funding_of

SHARD, SHARD_COUNT = 0, 1  # one shard: every transfer id is homed here, no claims
CURRENCY = "USD"
TOPUP = 10**12
"""Each account's opening top-up: far more than the one-unit payments ever spend."""
INSTALL_TIMEOUT = 3_600.0


def host_for(root: Path, role: str, epoch: int) -> ReplicaHost[ShardService]:
    """A cluster replica's host over ``root`` (fsync on), as ``ShardActor`` builds one."""

    def open_service(options: LogOptions) -> ShardService:
        return ShardService(SHARD, SHARD_COUNT, root.parent, **options)

    spec = ReplicaSpec(name=root.name, epoch=epoch, role=role)
    return ReplicaHost(
        f"{role} {root.name}", spec, root, open_service, service_class=ShardService, fsync=True
    )


class Backup:
    """A backup host behind its channel, served as a shard actor serves it (every frame
    but lease asks under the host's lock)."""

    def __init__(self, root: Path, epoch: int) -> None:
        self.host = host_for(root, "backup", epoch)
        self.server = ChannelServer(self.host.serve_locked)

    def installed(self) -> bool:
        return self.host.status().installed


class Workload:
    """Accounts and one-unit payments between them, with ids that never repeat."""

    def __init__(self, accounts: int, seed: int) -> None:
        self.accounts = [f"rb-{n}" for n in range(accounts)]
        self._rng = random.Random(seed)
        self._next = 0

    def specs(self) -> list[AccountSpec]:
        return [AccountSpec(id=a, currency=CURRENCY, owner="bench") for a in self.accounts]

    def topups(self) -> list[TransferOrder]:
        funding = funding_of(CURRENCY, SHARD)
        return [
            TransferOrder(
                id=f"rb-top-{a}",
                debit=funding,
                credits=(Credit(a, TOPUP),),
                currency=CURRENCY,
                kind=TransferKind.TOPUP,
            )
            for a in self.accounts
        ]

    def payments(self, count: int) -> list[TransferOrder]:
        orders = []
        for _ in range(count):
            debit, credit = self._rng.sample(self.accounts, 2)
            orders.append(
                TransferOrder(
                    id=f"rb-{self._next}",
                    debit=debit,
                    credits=(Credit(credit, 1),),
                    currency=CURRENCY,
                )
            )
            self._next += 1
        return orders


def build_history(root: Path, work: Workload, target: int, budget: float) -> int:
    """Fill a single copy at ``root`` with up to ``target`` transfers within ``budget``
    seconds; returns how many it holds. Reopened later as a replicated primary."""
    service = ShardService(SHARD, SHARD_COUNT, root.parent, root=root, fsync=True)
    try:
        specs = work.specs()
        for start in range(0, len(specs), MAX_BATCH):
            service.create_accounts(encode(specs[start : start + MAX_BATCH]))
        topups = work.topups()
        for start in range(0, len(topups), MAX_BATCH):
            service.apply_orders(encode(topups[start : start + MAX_BATCH]))
        started = time.monotonic()
        step = max(target // 20, 1)
        reported = 0
        while service.store.transfers < target and time.monotonic() - started < budget:
            count = min(MAX_BATCH, target - service.store.transfers)
            service.apply_orders(encode(work.payments(count)))
            done = service.store.transfers
            if done - reported >= step:
                reported = done
                elapsed = time.monotonic() - started
                print(
                    f"  build: {done:,} transfers in {elapsed:.0f} s "
                    f"({done / elapsed:,.0f}/s), store {service.store.size_bytes() / 2**20:,.0f} MiB",
                    flush=True,
                )
        return service.store.transfers
    finally:
        service.close()


@dataclass
class Writer:
    """Submits batches through the primary host as the actor would, timing each one."""

    host: ReplicaHost[ShardService]
    work: Workload
    batch: int
    done: list[tuple[float, float]] = field(default_factory=list)
    """(completed at, latency) per batch, monotonic seconds."""
    refused: list[float] = field(default_factory=list)
    """When a batch was refused (``NotPrimary``: no lease, or replication broken)."""
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="writer", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            payload = encode(self.work.payments(self.batch))
            started = time.monotonic()
            try:
                with self.host.lock:
                    self.host.leased().apply_orders(payload)
            except NotPrimary:
                self.refused.append(time.monotonic())
                time.sleep(0.01)
                continue
            ended = time.monotonic()
            self.done.append((ended, ended - started))


def window(writer: Writer, start: float, end: float) -> dict[str, float]:
    """The writer's batches completed in [start, end): latency percentiles and the
    longest gap between completions (counting from ``start`` and up to ``end``)."""
    rows = [(at, took) for at, took in writer.done if start <= at < end]
    refused = sum(1 for at in writer.refused if start <= at < end)
    if not rows:
        return {"batches": 0, "refused": refused, "longest_gap_ms": (end - start) * 1e3}
    latencies = sorted(took for _, took in rows)
    stamps = [start] + [at for at, _ in rows] + [end]
    gap = max(b - a for a, b in itertools.pairwise(stamps))
    quantiles = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    return {
        "seconds": end - start,
        "batches": len(rows),
        "refused": refused,
        "orders_per_s": len(rows) * writer.batch / (end - start),
        "p50_ms": quantiles[49] * 1e3,
        "p99_ms": quantiles[98] * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "longest_gap_ms": gap * 1e3,
    }


def rebuild(
    primary: ReplicaHost[ShardService], root: Path, epoch: int
) -> tuple[Backup, dict[str, float]]:
    """Attach a new backup at ``root`` and wait until it is installed; returns it with
    the attach call's time (under the lock), the time to installed and the copy's size."""
    backup = Backup(root, epoch)
    export = primary.root.parent / f".{primary.root.name}.export-{epoch}"
    started = time.monotonic()
    with primary.lock:
        locked = time.monotonic()
        primary.attach_backup(epoch, backup.server.address)
    attached = time.monotonic()
    copy_bytes = 0
    while not backup.installed():
        if time.monotonic() - started > INSTALL_TIMEOUT:
            raise TimeoutError("the new backup was never installed")
        with contextlib.suppress(FileNotFoundError):  # made, sent, then deleted
            copy_bytes = max(copy_bytes, export.stat().st_size)
        time.sleep(0.01)
    installed = time.monotonic()
    return backup, {
        "lock_wait_ms": (locked - started) * 1e3,
        "attach_ms": (attached - locked) * 1e3,
        "installed_after_s": installed - started,
        "copy_bytes": copy_bytes,
        "started": started,
        "installed": installed,
    }


def check_equal(primary: ReplicaHost[ShardService], backup: Backup) -> dict[str, object]:
    """The backup's state equals the primary's, and the balances sum to zero."""
    started = time.monotonic()
    with primary.lock, backup.host.lock:
        assert primary.service is not None and backup.host.service is not None
        same = primary.service.snapshot_payload() == backup.host.service.snapshot_payload()
        sums = primary.service.currency_sums()
        transfers = primary.service.store.transfers
    return {
        "backup_equals_primary": same,
        "balance_sums": sums,
        "transfers_at_end": transfers,
        "check_s": time.monotonic() - started,
    }


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, object]:
    work = Workload(args.accounts, seed=1)
    print(f"building up to {args.transfers:,} transfers (at most {args.build_seconds:.0f} s)")
    built_at = time.monotonic()
    reached = build_history(work_dir / "primary", work, args.transfers, args.build_seconds)
    built_s = time.monotonic() - built_at
    print(f"built {reached:,} transfers in {built_s:.0f} s; opening as a replicated primary")
    primary = host_for(work_dir / "primary", "primary", 1)
    primary.keep_lease()  # from its backup, as in a cluster
    _first, first = rebuild(primary, work_dir / "backup-1", 2)
    print(f"first backup installed in {first['installed_after_s']:.1f} s (no writer yet)")
    writer = Writer(primary, work, args.writer_batch)
    thread = writer.start()
    time.sleep(1.0)  # warm-up, left out of the baseline
    t0 = time.monotonic()
    print(f"baseline: {args.phase_seconds:.0f} s of writes with the first backup attached")
    time.sleep(args.phase_seconds)
    print("attaching a new backup (epoch 3) while the writer goes on")
    second_backup, second = rebuild(primary, work_dir / "backup-2", 3)
    print(f"new backup installed after {second['installed_after_s']:.1f} s; measuring after")
    time.sleep(args.phase_seconds)
    t_end = time.monotonic()
    writer.stop()
    thread.join()
    print("checking the new backup against the primary")
    end = check_equal(primary, second_backup)
    return {
        "transfers_target": args.transfers,
        "transfers_built": reached,
        "build_s": built_s,
        "store_bytes": primary.service.store.size_bytes() if primary.service else 0,
        "first_attach": {k: v for k, v in first.items() if k not in ("started", "installed")},
        "rebuild": {k: v for k, v in second.items() if k not in ("started", "installed")},
        "writer_batch": args.writer_batch,
        "writer_refused": len(writer.refused),
        "baseline": window(writer, t0, t0 + args.phase_seconds),
        "during": window(writer, second["started"], second["installed"]),
        "after": window(writer, second["installed"], t_end),
        **end,
    }


def print_table(result: dict[str, object]) -> None:
    print(
        f"\nhistory: {result['transfers_built']:,} transfers (asked {result['transfers_target']:,})"
    )
    rebuilt = result["rebuild"]
    assert isinstance(rebuilt, dict)
    print(
        f"attach under the lock: {rebuilt['attach_ms']:.1f} ms (lock wait {rebuilt['lock_wait_ms']:.1f} ms); "
        f"installed after {rebuilt['installed_after_s']:.1f} s; copy {rebuilt['copy_bytes'] / 2**20:,.0f} MiB"
    )
    print(
        f"{'phase':<10}{'batches':>9}{'orders/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'gap ms':>9}{'refused':>9}"
    )
    for phase in ("baseline", "during", "after"):
        row = result[phase]
        assert isinstance(row, dict)
        print(
            f"{phase:<10}{row['batches']:>9}{row.get('orders_per_s', 0):>10,.0f}"
            f"{row.get('p50_ms', 0):>9.1f}{row.get('p99_ms', 0):>9.1f}"
            f"{row.get('max_ms', 0):>9.1f}{row['longest_gap_ms']:>9.1f}{row['refused']:>9}"
        )
    print(
        f"backup equals primary: {result['backup_equals_primary']}; balance sums {result['balance_sums']}; "
        f"writer refused (no lease or no backup) {result['writer_refused']} times"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--transfers", type=int, default=10_000_000, help="history to build (10,000,000)"
    )
    parser.add_argument(
        "--build-seconds", type=float, default=900.0, help="stop building after this (900)"
    )
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts (10,000)")
    parser.add_argument("--writer-batch", type=int, default=256, help="orders per batch (256)")
    parser.add_argument(
        "--phase-seconds", type=float, default=20.0, help="baseline and after windows (20)"
    )
    parser.add_argument("--dir", type=Path, help="work directory (default: a new /tmp/rebuild-*)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix="rebuild-", dir="/tmp"))
    try:
        result = measure(args, work_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sums = result["balance_sums"]
    zero = isinstance(sums, dict) and set(sums.values()) == {0}
    ok = result["backup_equals_primary"] is True and zero
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
