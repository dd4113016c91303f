"""The wire types: everything that crosses a process boundary or lands in a log, and its msgpack.

Log records of shards and the coordinator, what a primary ships to its backup, what a
replica and the controller say to each other, routes, and shard statistics are declared
here once, not in the actor that happens to send them.

One encoder and one typed decoder per message, built once: decoding validates
the shape, so a malformed message fails at the boundary, not deep inside a rule.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tokpay.ledger.changes import Mark
from tokpay.ledger.model import Account, Decision, HistoryPage, Prepared, Transfer


class HistoryReply(msgspec.Struct, frozen=True, kw_only=True):
    page: HistoryPage | None = None
    error: str | None = None
    detail: str = ""


class AccountsCreated(msgspec.Struct, tag="accounts"):
    accounts: list[Account]


class TransfersCommitted(msgspec.Struct, tag="transfers"):
    transfers: list[Transfer]
    refused: list[Mark] = []
    """Refusals the ledger remembers (``REMEMBERED_REFUSALS``), and the claims of ids whose
    home is this shard that came in the same ``claim_and_apply`` batch."""


class TxPrepared(msgspec.Struct, tag="prepared"):
    records: list[Prepared]
    refused: list[Mark] = []
    """Refusals to remember, and claims of ids whose home is this shard."""


class IdsClaimed(msgspec.Struct, tag="claimed"):
    """Transfer ids bound to their bodies at their home shard."""

    marks: list[Mark]


class TxDecided(msgspec.Struct, tag="decided"):
    decisions: list[Decision]


ShardRecord = AccountsCreated | TransfersCommitted | TxPrepared | TxDecided | IdsClaimed
"""One write-ahead-log record of a shard: everything one batch changed."""


class CoordinatorCommit(msgspec.Struct, tag="commit"):
    """Durable commit decisions, each with the shards that must apply it."""

    txids: list[str]
    participants: list[list[int]]


class CoordinatorDone(msgspec.Struct, tag="done"):
    """Every participant applied these; recovery need not re-send them."""

    txids: list[str]


CoordinatorRecord = CoordinatorCommit | CoordinatorDone

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, float("inf"))


class ShardStats(msgspec.Struct, kw_only=True):
    shard: int
    accounts: int
    transfers: int
    prepared: int
    log_sequence: int
    durable_sequence: int = 0
    """The log record the store holds durably (older log segments are deleted)."""
    store_bytes: int = 0
    checkpoint_failures: int = 0
    batches: int = 0
    batch_items: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    fsync_buckets: list[int] = msgspec.field(default_factory=lambda: [0] * len(FSYNC_BUCKETS))


ChannelAddress = tuple[str, int, bytes]
"""(host, port, token) of a replica's direct channel."""


class Route(msgspec.Struct, frozen=True):
    """The serving primary of one group at one epoch (address None while there is none)."""

    epoch: int
    primary: str | None
    address: ChannelAddress | None
    backup: ChannelAddress | None = None
    """The backup's channel: asked for routes too, when every primary is gone."""


# -- replication between a primary and its backup ---------------------------------------------


class LogPosition(msgspec.Struct, array_like=True):
    """A place in a replicated log: every frame between primary and backup starts with it."""

    epoch: int
    sequence: int


class ShippedRecord(LogPosition, array_like=True):
    """One log record as the primary wrote it, for the backup to append verbatim."""

    payload: bytes


class InstallBegin(LogPosition, array_like=True):
    """``install_begin``: keep records after ``sequence`` (size 0); ``install_state``: a
    copy of the state at ``sequence`` of ``size`` bytes follows in chunks."""

    size: int


# -- replicas and the controller --------------------------------------------------------------


SPARE_ROLE = "spare"
"""A replica process started ahead of need (``ReplicaSpec.role``): it opens nothing, has
no directory and reports nothing until ``activate`` makes it a backup at an epoch."""


class ReplicaSpec(msgspec.Struct, frozen=True):
    """How the controller creates a replica: its unique name, epoch and first role."""

    name: str
    epoch: int
    role: str
    group: str = ""
    """Its replica group (``shard-3``, ``coordinator``): written into its proof file."""
    root: str = ""
    """The directory (under the node's ``replicas/``) it opens; empty: its own name. A
    copy brought back from its disk after a restart keeps its directory under a new name."""


def as_backup(spare: ReplicaSpec, epoch: int) -> ReplicaSpec:
    """The spec of a backup at ``epoch`` in place of ``spare`` (same name and group)."""
    return msgspec.structs.replace(spare, role="backup", epoch=epoch)


class HeartbeatReport(ReplicaSpec, frozen=True, kw_only=True):
    """A replica as it stands now (its role may have changed since its spec) and its log."""

    sequence: int
    broken: bool
    leaseless: bool = False
    """A primary whose backup has not granted its lease lately."""


class HeartbeatAnswer(msgspec.Struct, frozen=True):
    epoch: int
    fence: bool = False
    routes: bytes = b""
    """The controller's routes (encoded ``dict[str, Route]``): every replica can tell a
    client where the primaries are, so clients need no Ray call to find them."""


class ReplicaProof(msgspec.Struct, frozen=True, kw_only=True):
    """What a replica keeps on its own disk (``replica.json``) to prove what it holds.

    A write is acknowledged at epoch E only once the primary of E and the one backup of
    E (in sync) both hold it, so the highest epoch at which a copy was primary or in-sync
    backup (``in_sync_epoch``) says which acknowledged records it certainly holds.
    """

    group: str
    member: str
    """The replica (actor name) that wrote it last."""
    epoch: int
    role: str
    """primary | backup-in-sync | backup-installing | retired."""
    in_sync_epoch: int
    """The highest epoch at which this copy was primary or in-sync backup (0: never)."""
    primary_at_in_sync: bool
    """Whether it was the primary of ``in_sync_epoch`` (not only its backup)."""
    sequence: int
    """Its log's last sequence when this was written: the log must reach at least this."""


class ReplicaStatus(msgspec.Struct, frozen=True):
    role: str
    epoch: int
    sequence: int
    lease: bool
    broken: str | None
    pid: int
    installed: bool = False
    """A backup that has received its primary's snapshot (it follows the log)."""
    proof: ReplicaProof | None = None
    """What its directory's proof file says (None: the single-node default)."""
    kept_nothing: bool = False
    """A backup still installing that has kept no record yet (none was acknowledged
    through it; tokpay.actors.copies.acknowledged_bound)."""


_encoder = msgspec.msgpack.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decode(data: bytes, kind: Any) -> Any:
    """``data`` as ``kind``; one decoder per type, built on first use."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return decoder.decode(data)
