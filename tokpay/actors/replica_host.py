"""The replica host: role, epoch, lease, fencing, install, heartbeat and routes, written once.

A shard and the coordinator are two state machines (``ReplicatedService`` subclasses)
plugged into this one host. The host decides whether a request may be served (a
primary, under its lease, with replication intact) and handles everything a replica
does for the cluster: follow its primary's records as a backup, receive a chunked
install, be promoted, attach a new backup, fence itself when a newer epoch exists,
report to the controller every ``HEARTBEAT_SECONDS`` and hand its routes to clients.
A primary holds its lease from its backup (``keep_lease``), which grants it on its
channel (``lease``) and waits its last grant out once promoted: reads and writes go on
while the controller, or the whole head machine, is away.

In the single-node default there is no controller: the one copy is a primary forever,
with a lease that never runs out, at ``SINGLE_NODE_EPOCH``.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import ray

from tokpay.actors.catch_up import CATCH_UP_UNDER_LOCK_RECORDS, CatchUpThrottle
from tokpay.actors.channel import NotPrimary
from tokpay.actors.copies import EARLY_WAL_DIR, ProofKeeper, delete_old_copies
from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE
from tokpay.actors.protocol import (
    ChannelAddress,
    HeartbeatAnswer,
    HeartbeatReport,
    InstallBegin,
    ReplicaSpec,
    ReplicaStatus,
    ShippedRecord,
    decode,
    encode,
)
from tokpay.actors.replicated_service import (
    SINGLE_NODE_EPOCH,
    STOP_EXIT_CODE,
    LogOptions,
    ReplicatedService,
    clear_for_install,
)
from tokpay.actors.replication import (
    INSTALL_METHODS,
    BackupLeaseAsk,
    Heartbeat,
    InstallReceiver,
    Lease,
    LeaseGrants,
    Role,
    send_state,
)
from tokpay.actors.timing import HEARTBEAT_TIMEOUT_SECONDS, LEASE_MARGIN_SECONDS, LEASE_SECONDS
from tokpay.wal import LogRecord, SequenceGap, WriteAheadLog
from tokpay.wal.distrust import distrust

log = logging.getLogger("tokpay.replica")

NODE_DATA_DIR_ENV = "TOKPAY_NODE_DATA_DIR"
"""Set on every node of a cluster: the node's own disk, as on a separate machine."""

S = TypeVar("S", bound=ReplicatedService)

OpenService = Callable[[LogOptions], S]
"""Open the state machine with these log options (its root among them)."""


def replica_root(data_dir: str, local_name: str, spec: ReplicaSpec | None) -> Path:
    """Where a copy keeps its log and snapshots: ``data_dir/local_name`` on a single node,
    ``<node disk>/replicas/<name>`` for a cluster replica."""
    if spec is None:
        return Path(data_dir) / local_name
    base = os.environ.get(NODE_DATA_DIR_ENV)
    if not base:
        raise RuntimeError(f"{NODE_DATA_DIR_ENV} is not set on this node (see cluster/)")
    return Path(base) / "replicas" / (spec.root or spec.name)


class ReplicaHost(Generic[S]):
    """One copy of a replicated group (or the single copy), around its state machine.

    Not thread-safe by itself: the actor holds ``lock`` around every call, except
    ``fence``, which takes it (the heartbeat thread fences).
    """

    def __init__(
        self,
        label: str,
        spec: ReplicaSpec | None,
        root: Path,
        open_service: OpenService[S],
        *,
        service_class: type[S],
        fsync: bool,
    ) -> None:
        # Each replica is its own Ray worker process: its log lines carry time and part.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self.label = label
        self.fsync = fsync
        self.spec = spec
        self.root = root
        self.lock = threading.Lock()
        self._open = open_service
        self._service_class = service_class
        self._routes = b""
        self._receiver = InstallReceiver()
        # A backup between ``install_begin`` and the end of its state copy: its log keeps
        # the primary's records (they count as acknowledged) before its state arrives.
        self._early_log: WriteAheadLog | None = None
        self._generation = 0
        self._early_floor = 0
        """Counts installs begun: a catch-up of an abandoned install stops."""
        self._throttle: CatchUpThrottle | None = None
        """Set while a catch-up replays kept records: holds each new one back (catch_up.py)."""
        self.service: S | None
        if spec is None:
            self.role, self.epoch = Role.PRIMARY, SINGLE_NODE_EPOCH
            self.lease = Lease(forever=True)
            self.service = open_service(self._options(SINGLE_NODE_EPOCH, False, 0))
        else:
            self.role, self.epoch = Role(spec.role), spec.epoch
            self.lease = Lease(forever=False)
            # A primary started on a directory (a new cluster, or a copy brought back from
            # its disk) may replace a backup that granted a lease until its process was
            # ended: it serves nothing until such a grant has surely run out.
            primary = self.role is Role.PRIMARY
            if primary:
                self.lease.hold_until(time.monotonic() + LEASE_SECONDS + LEASE_MARGIN_SECONDS)
            self.service = open_service(self._options(spec.epoch, True, 0)) if primary else None
        self._grants = LeaseGrants()
        self._lease_ask = BackupLeaseAsk()
        self._proof = ProofKeeper(root, spec.group, spec.name, fsync=fsync) if spec else None
        self._prove_role()
        self._heartbeat: Heartbeat | None = None
        self._lease_keeper: Heartbeat | None = None
        self._lease_lapsed_at: float | None = None

    def _options(self, epoch: int, replicated: bool, wal_floor: int) -> LogOptions:
        return LogOptions(
            root=self.root,
            fsync=self.fsync,
            epoch=epoch,
            replicated=replicated,
            wal_floor=wal_floor,
        )

    def start_heartbeat(self) -> None:
        """Report to the controller, and (as a primary) ask the backup for the lease, from
        now on (a cluster replica only)."""
        if self.spec is not None and self._heartbeat is None:
            self._heartbeat = _controller_heartbeat(self.report, self.on_answer)
            self.keep_lease()

    def keep_lease(self) -> None:
        """Ask the backup for the lease, whenever this copy is a primary, from now on."""
        if self._lease_keeper is None:
            self._lease_keeper = Heartbeat(self._ask_for_lease, self._on_lease_answer, "lease")

    def _on_lease_answer(self, asked_at: float, granted: bool) -> None:
        now = time.monotonic()
        if granted:
            self.lease.extend_from(asked_at)
            if self._lease_lapsed_at is not None:
                log.warning(
                    "%s: lease from the backup back after %.2f s",
                    self.label,
                    now - self._lease_lapsed_at,
                )
                self._lease_lapsed_at = None
        elif self.role is Role.PRIMARY and self._lease_lapsed_at is None and not self.lease.valid():
            self._lease_lapsed_at = now
            log.warning(
                "%s: lease lapsed (last ask took %.2f s: %s)",
                self.label,
                now - asked_at,
                self._lease_ask.refusal,
            )

    def _ask_for_lease(self) -> bool:
        """One lease ask to this primary's backup (on the lease thread): granted or not."""
        service = self.service
        if self.role is not Role.PRIMARY or service is None:
            self._lease_ask.close()
            return False
        backup = service.log.backup
        return self._lease_ask.ask(backup.address if backup else None, self.epoch)

    # -- may this copy serve? --------------------------------------------------------------------

    def primary(self) -> S:
        if self.role is not Role.PRIMARY or self.service is None:
            raise NotPrimary(f"{self.label}: this replica is {self.role}")
        return self.service

    def leased(self) -> S:
        """The primary, while its lease holds: only one primary acts at a time.

        (Even without this check a replaced primary could not make a write durable on
        two machines, since its backup refuses its epoch; the lease keeps it from
        touching its own log at all.)
        """
        service = self.primary()
        if not self.lease.valid():
            raise NotPrimary(f"{self.label}: no lease from its backup")
        return service

    def readable(self) -> S:
        service = self.leased()
        if service.log.broken:
            raise NotPrimary(f"{self.label}: waiting for a new backup")
        return service

    def check_lease_after_read(self) -> None:
        """Checked again after a read: a pause in between (GC, SIGSTOP) must not let a
        deposed primary answer after its lease ran out."""
        if not self.lease.valid():
            raise NotPrimary(f"{self.label}: lease ran out during the read")

    # -- what the cluster asks of a replica on its channel ----------------------------------------

    def serve_locked(self, method: str, payload: bytes) -> bytes:
        """``serve_replication`` for an actor whose calls run on threads (a shard): under
        ``lock``, except ``lease``, which must not wait behind a batch being applied."""
        if method == "lease":
            return self.serve_replication(method, payload)
        with self.lock:
            reply = self.serve_replication(method, payload)
            throttle = self._throttle if method == "replicate" else None
            early = self._early_log
            kept = early.last_sequence if throttle is not None and early is not None else None
        if throttle is not None and kept is not None:
            throttle.hold(kept)  # off the lock: the catch-up needs it for its rounds
        return reply

    def serve_replication(self, method: str, payload: bytes) -> bytes:
        """``replicate``, ``lease``, the install frames and ``routes``; anything else is
        refused. ``lease`` needs no lock (``LeaseGrants`` has its own)."""
        if method == "lease":
            return self.grant_lease(decode(payload, int))
        if method == "replicate":
            if self.service is None and self._early_log is not None:
                return self._keep_early(payload)
            return self._backup().follow(payload)
        if method == "install_begin":
            self._require_backup()
            self._begin_install(decode(payload, InstallBegin))
            return b""
        if method in INSTALL_METHODS:
            self._require_backup()
            done = self._receiver.receive(method, payload, self.epoch, self.root)
            if done is not None:
                # Opening the copy and replaying what was kept meanwhile take time that grows
                # with the copy: done off the lock, so records keep being acknowledged.
                generation = self._generation
                threading.Thread(
                    target=self._catch_up, args=(*done, generation), name="catch-up", daemon=True
                ).start()
            return b""
        if method == "routes":
            if self.role is Role.FENCED:
                raise NotPrimary("fenced: this replica's routes are stale")
            return self._routes
        raise ValueError(f"{method!r} is not served on the channel")

    def grant_lease(self, epoch: int) -> bytes:
        """Grant the lease to this backup's primary of ``epoch``: a promise not to serve as
        a primary until it has run out (kept by ``promote`` through ``LeaseGrants.close``)."""
        if self.role is not Role.BACKUP or epoch != self.epoch or not self._grants.grant():
            raise NotPrimary(
                f"{self.label}: no lease for epoch {epoch} ({self.role} at {self.epoch})"
            )
        return b""

    def _backup(self) -> S:
        self._require_backup()
        if self.service is None:
            raise NotPrimary(f"{self.label}: this backup has no state installed yet")
        return self.service

    def _require_backup(self) -> None:
        if self.role is not Role.BACKUP:
            raise NotPrimary(f"{self.label}: this replica is {self.role}, not a backup")

    def _begin_install(self, begin: InstallBegin) -> None:
        """Start over from an empty directory whose log continues after ``begin.sequence``."""
        if begin.epoch != self.epoch:
            raise NotPrimary(f"install of epoch {begin.epoch} refused at epoch {self.epoch}")
        if self.service is not None:
            self.service.close()
            self.service = None
        if self._early_log is not None:
            self._early_log.close()
        self._generation += 1
        clear_for_install(self.root)
        self._early_log = WriteAheadLog.open(
            self.root / EARLY_WAL_DIR, fsync=self.fsync, floor=begin.sequence
        )
        self._early_floor = begin.sequence
        self._prove_role()
        log.info("%s: keeping records after %d; the state copy follows", self.label, begin.sequence)

    def _keep_early(self, payload: bytes) -> bytes:
        """A record that arrives before the state copy: logged, applied once the copy is in."""
        assert self._early_log is not None
        shipped = decode(payload, ShippedRecord)
        if shipped.epoch != self.epoch:
            raise NotPrimary(f"record of epoch {shipped.epoch} refused at epoch {self.epoch}")
        try:
            self._early_log.append(shipped.epoch, shipped.payload, sequence=shipped.sequence)
        except SequenceGap as error:
            raise NotPrimary(f"out of order: {error}") from error
        except Exception as error:
            log.critical("%s: backup log write failed; stopping", self.label, exc_info=True)
            distrust(self.root, f"backup log write failed: {error!r}")
            os._exit(STOP_EXIT_CODE)
        return b""

    def _catch_up(self, copy: Path, sequence: int, generation: int) -> None:
        """The state copy is in: open it and replay the records kept meanwhile, off the lock,
        in rounds; the last few records are replayed under the lock, then the copy serves.

        Each round reads the kept log only up to where it ended when the round began (its
        first record is read under the lock, which fixes that end), so appends go on.
        """
        started = time.perf_counter()
        service: S | None = None
        throttle: CatchUpThrottle | None = None
        try:
            self._service_class.adopt_state(self.root, copy, sequence, fsync=self.fsync)
            service = self._open(self._options(self.epoch, True, sequence))
            applied = sequence
            while True:
                with self.lock:
                    early = self._early_log
                    if early is None or generation != self._generation:
                        raise NotPrimary("the install was abandoned")
                    if throttle is None:  # the first round: new records wait for it from now
                        throttle = self._throttle = CatchUpThrottle(applied, early.last_sequence)
                    if early.last_sequence - applied <= CATCH_UP_UNDER_LOCK_RECORDS:
                        self._replay(service, early.records(applied), generation)
                        early.close()
                        shutil.rmtree(self.root / EARLY_WAL_DIR, ignore_errors=True)
                        self._early_log, self.service = None, service
                        self._prove_role()
                        break
                    kept = early.records(applied)
                    first = next(kept)
                target = self._replay(service, itertools.chain([first], kept), generation)
                applied = max(applied, target)
        except Exception:
            log.error("%s: installing the state copy failed", self.label, exc_info=True)
            if service is not None:
                service.close()
            return
        finally:
            if throttle is not None:
                with self.lock:
                    if self._throttle is throttle:
                        self._throttle = None
                throttle.finish()
        assert throttle is not None  # the loop ran at least one round
        log.info(
            "%s: backup installed from a copy at sequence %d, caught up in %.3f s "
            "(primary held back %.2f s in all, %d waits ran out)",
            self.label,
            sequence,
            time.perf_counter() - started,
            throttle.held_seconds,
            throttle.timeouts,
        )

    def _replay(self, service: S, records: Iterator[LogRecord], generation: int) -> int:
        """Follow kept records into ``service``; the last sequence replayed."""
        last = 0
        for record in records:
            if generation != self._generation:
                raise NotPrimary("the install was abandoned")
            if record.sequence <= service.last_sequence:
                continue  # already in the copy
            service.follow(encode(ShippedRecord(record.epoch, record.sequence, record.payload)))
            last = record.sequence
            if self._throttle is not None:
                self._throttle.replayed(last)
        return last

    # -- reconfiguration (called by the controller) -------------------------------------------------

    def promote(self, epoch: int, hold: float = 0.0) -> bool:
        """Backup -> primary at ``epoch``; records of any older epoch are refused from now.

        It grants no lease from now on and serves nothing until the last one it granted
        is over, nor for ``hold`` seconds (another copy that granted leases was fenced
        just before).
        """
        if self.role is not Role.BACKUP or self.service is None or epoch <= self.epoch:
            return False
        self.lease.hold_until(max(self._grants.close(), time.monotonic() + hold))
        self.epoch = epoch
        self.service.log.detach(epoch)
        self.role = Role.PRIMARY
        self._prove_role()
        log.warning("%s: promoted to primary at epoch %d", self.label, epoch)
        return True

    def attach_backup(self, epoch: int, address: ChannelAddress) -> int:
        """Make the backup at ``address`` (already at ``epoch``) this primary's, from a snapshot."""
        service = self.primary()
        if epoch < self.epoch:
            raise NotPrimary(f"attach of epoch {epoch} refused at epoch {self.epoch}")
        self.epoch = epoch
        started = time.perf_counter()
        broken = service.log.broken is not None
        sequence = service.log.attach(epoch, address)
        self._prove_role()
        if broken:
            # This copy holds records the old backup never acknowledged, and from here it
            # answers from them (reads, and retries that find their work already done log
            # nothing). Until the state copy lands they are on this disk only, and a new
            # backup that kept no record would prove the old one complete (``copies``):
            # an empty record through the new backup keeps the old one from being chosen.
            service.append_barrier()
        export = service.export_state()
        threading.Thread(
            target=self._send_copy, args=(epoch, address, export), name="install", daemon=True
        ).start()
        log.info(
            "%s: backup attached at epoch %d, sequence %d, in %.3f s; its state copy follows",
            self.label,
            epoch,
            sequence,
            time.perf_counter() - started,
        )
        return sequence

    def _send_copy(
        self, epoch: int, address: ChannelAddress, export: Callable[[Path], int]
    ) -> None:
        """Off the lock: copy the state (writes go on meanwhile) and stream it to the backup.

        Until it lands the backup cannot take over (it reports ``installed`` False); a
        failure here leaves it so, and the controller builds another backup.
        """
        copy = self.root.parent / f".{self.root.name}.export-{epoch}"
        started = time.perf_counter()
        try:
            sequence = export(copy)
            made = time.perf_counter() - started
            send_state(epoch, address, copy, sequence)
            log.info(
                "%s: state copy at sequence %d (%d bytes) made in %.2f s, sent in %.2f s",
                self.label,
                sequence,
                copy.stat().st_size,
                made,
                time.perf_counter() - started - made,
            )
        except Exception:
            log.error(
                "%s: state copy for the backup at %s failed", self.label, address, exc_info=True
            )
        finally:
            copy.unlink(missing_ok=True)

    def fence(self) -> None:
        """Stop serving anything: a newer epoch exists elsewhere."""
        self.lease.revoke()
        self._grants.close()
        with self.lock:
            if self.role is not Role.FENCED:
                log.warning("%s: fenced at epoch %d", self.label, self.epoch)
            self.role = Role.FENCED
            if self.service is not None:
                self.service.log.detach(self.epoch)
            self._prove_role()

    def _prove_role(self) -> None:
        """Rewrite this copy's proof file for its role and epoch now, before acting on it
        (tokpay.actors.copies: what the controller resumes from after a restart)."""
        proof, service = self._proof, self.service
        if proof is None:
            return
        sequence = service.last_sequence if service else 0
        if self.role is Role.PRIMARY:
            proof.primary(self.epoch, sequence)
        elif self.role is Role.FENCED:
            proof.retired()
        elif service is None:
            proof.installing(self.epoch)
        else:
            proof.in_sync(self.epoch, sequence)

    # -- reports ------------------------------------------------------------------------------------

    def report(self) -> HeartbeatReport:
        """What this replica tells the controller about itself."""
        service = self.service
        return HeartbeatReport(
            name=self.spec.name if self.spec else "",
            epoch=self.epoch,
            role=str(self.role),
            sequence=service.last_sequence if service else 0,
            broken=bool(service and service.log.broken),
            leaseless=self.role is Role.PRIMARY and self._lease_lapsed_at is not None,
        )

    def on_answer(self, asked_at: float, answer: HeartbeatAnswer) -> None:
        if answer.routes:
            self._routes = answer.routes
        if answer.fence:
            self.fence()

    def status(self) -> ReplicaStatus:
        service = self.service
        return ReplicaStatus(
            role=str(self.role),
            epoch=self.epoch,
            sequence=service.last_sequence if service else 0,
            lease=self.lease.valid(),
            broken=service.log.broken if service else None,
            pid=os.getpid(),
            installed=service is not None and self._early_log is None,
            proof=self._proof.proof if self._proof else None,
            kept_nothing=self._kept_nothing(),
        )

    def _kept_nothing(self) -> bool:
        """Installing, and no record kept since the install began (or no install yet)."""
        with self.lock:
            if self.service is not None:
                return False
            early = self._early_log
            return early is None or early.last_sequence <= self._early_floor

    def state_bytes(self) -> bytes:
        """The full in-memory state, encoded: equal bytes mean equal replicas."""
        with self.lock:
            return self.service.snapshot_payload() if self.service else b""


def delete_old_copies_here(group: str, keep: list[str], epoch: int) -> list[str]:
    """In a replica's process: delete this node's copies of ``group`` from before
    ``epoch`` (asked of a replica already running there, so that no Ray worker process
    has to start for it: starting one costs seconds of CPU on a small machine)."""
    base = Path(os.environ[NODE_DATA_DIR_ENV])
    return delete_old_copies(base, group, set(keep), epoch)


def _controller_heartbeat(
    report: Callable[[], HeartbeatReport],
    on_answer: Callable[[float, HeartbeatAnswer], None],
) -> Heartbeat:
    controller: list[Any] = []

    def send() -> HeartbeatAnswer:
        if not controller:
            controller.append(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE))
        try:
            answer: HeartbeatAnswer = ray.get(
                controller[0].heartbeat.remote(report()), timeout=HEARTBEAT_TIMEOUT_SECONDS
            )
        except Exception:
            controller.clear()
            raise
        return answer

    return Heartbeat(send, on_answer)
