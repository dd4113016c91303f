"""Every interval the replicas, the controller and the clients must agree on, in one place.

Failover rests on a few relations between these numbers: a replica is declared lost
only after several missed heartbeats, and later than the controller could notice its
own stall; a primary renews its lease several times per lease; a client keeps retrying
for longer than failure detection plus the lease wait of a promotion. They are checked
at import, so a change that breaks one fails at once instead of in a drill (Python drops
``assert`` under ``-O``, hence ``_require``). That a primary's lease ends before the
controller's view of it is a property of how leases are granted (``replication.Lease``),
not of these numbers alone; docs/ARCHITECTURE.md states it with its clock assumption.
A client's retry budget does not cover building a new backup after a promotion (up to
``REPLICA_CREATE_TIMEOUT_SECONDS``): writes that wait longer get 503 and are retried.
"""

from __future__ import annotations

# -- replicas and the controller ------------------------------------------------------------

HEARTBEAT_SECONDS = 0.2
"""How often every replica reports to the controller, and a primary asks its backup to
renew its lease."""

HEARTBEAT_TIMEOUT_SECONDS = 0.5
"""How long a replica waits for the controller's answer to one report."""

LEASE_SECONDS = 1.0
"""How long a primary may serve after it asked its backup for its lease."""

LEASE_MARGIN_SECONDS = 0.2
"""Added to its last grant by a backup before it serves as a primary: clock-rate
differences and scheduling."""

LEASE_ASK_TIMEOUT_SECONDS = 0.5
"""How long a primary waits for its backup's answer to one lease ask."""

DEAD_AFTER_SECONDS = 1.2
"""A replica silent this long is treated as lost (a backup: see BACKUP_SILENT_SECONDS).
Longer than a lease plus its margin, so a backup promoted this late has no grant left to
wait out: a real loss costs no more than at 0.8 s, while a starved machine (a gateway or a
node starting on 2 cores) no longer makes false failovers in cascades."""

BACKUP_SILENT_SECONDS = 3.0
"""A backup silent for DEAD_AFTER_SECONDS is replaced only if its primary also reports
trouble with it (replication broken, or no lease granted); silent this long, it is
replaced anyway. A starved backup that still answers its primary is not torn down: each
needless rebuild opens a window in which the primary alone holds the newest records."""

MONITOR_SECONDS = 0.1
"""How often the controller looks for lost replicas."""

CONTROLLER_STALL_SECONDS = 0.3
"""A monitor round this much late means the controller itself stalled (nobody's silence
during the stall counts against them)."""

NODES_REFRESH_SECONDS = 0.5
"""How often the controller asks Ray which nodes are alive."""

RETIRE_AFTER_SECONDS = 30.0
"""A replaced replica is fenced at once and its process ended this much later."""

SUSPECT_SECONDS = 15.0
"""A node that just lost a replica gets no new one for this long: longer than Ray's GCS
takes to declare a silent node dead (about 12 s, cluster/head.sh), so a dead node that Ray
still lists alive is never picked for a new backup. A node started again (a new Ray node
id) is trusted at once."""

SPARE_ACTIVATE_SECONDS = 3.0
"""A spare that has not become a backup in this long is taken for gone (a process that
died with a restart): a new replica process is started instead."""

SPARE_CHECK_SECONDS = 5.0
"""How often the controller asks its spares whether they are still there."""

RECONFIGURE_RETRY_SECONDS = 0.5
"""Pause before the monitor tries a failed reconfiguration again."""

NO_CANDIDATE_WAIT_SECONDS = 1.0
"""Pause when a group has no copy to promote or no node for a backup."""

CONTROLLER_CALL_TIMEOUT_SECONDS = 10.0
"""The controller's calls to one replica (promote, status, address)."""

REPLICA_CREATE_TIMEOUT_SECONDS = 60.0
"""Starting a replica process and installing a backup."""

# -- replication between a primary and its backup -------------------------------------------

SHIP_TIMEOUT_SECONDS = 2.0
"""How long a primary waits for its backup's answer before it stops taking writes."""

INSTALL_TIMEOUT_SECONDS = 60.0
"""One chunk of a snapshot install; it may take far longer than one record."""

CATCH_UP_HOLD_SECONDS = 0.25
"""Longest a backup catching up holds one record's acknowledgement (catch_up.py)."""

SNAPSHOT_EVERY_RECORDS = 1_000
"""Log records between checkpoints (shards and the coordinator): bounds replay and disk.
The coordinator's snapshot holds only undelivered decisions, so it is cheap to take often;
at 20,000 its log held ~13 bytes per transfer that was never cut (the 10M soak)."""

CHECKPOINT_SECONDS = 2.0
"""How often a shard makes its store durable, so the log before it can go: bounds the
log a restart replays (a few seconds of writes), whatever the history holds."""

# -- the coordinator --------------------------------------------------------------------------

DECIDE_ATTEMPTS = 10
"""Tries to deliver a decision before leaving it to the periodic sweep."""

DECIDE_BACKOFF_SECONDS = 0.5
SWEEP_INTERVAL_SECONDS = 2.0
"""How often the coordinator resolves in-doubt transactions."""

SHARD_CALL_TIMEOUT_SECONDS = 10.0
"""One in-doubt query or decision batch to one shard during the sweep."""

PREPARE_DEADLINE_SECONDS = 2.5
"""How long a client's batch waits on one participant shard that says nothing at all, for
its votes or for it to apply a commit. Longer than ``SHIP_TIMEOUT_SECONDS``: a primary
waiting on a lost backup says nothing until it gives up on it, then answers "not now". A
shard that misses it votes no (``unavailable``) for that batch's transactions and gets
nothing more from client batches until it answers a probe. (A shard that answers "not now"
is waited for up to RECONFIGURE_WAIT_SECONDS.)"""

RECONFIGURE_WAIT_SECONDS = 6.0
"""How long, in all, a client's cross-shard batch waits on participant shards that keep
answering but cannot take it yet, and on its own log (a failover or a backup rebuild under
way): a short reconfiguration is waited out instead of answered with 503. Silence is not:
a shard that says nothing for ``PREPARE_DEADLINE_SECONDS`` misses its deadline at once
(``ActorChannel.call``'s quiet)."""

PROBE_PAUSE_SECONDS = 0.2
"""Pause between two probes of a shard that missed its deadline."""

LOOKUP_WAIT_SECONDS = 1.0
"""How long a lookup spanning shards waits for commit decisions still being applied among
its shards (``read_barrier``) before it answers 503; its reads then get a prepare deadline."""

DELIVERY_WAIT_SECONDS = 0.5
"""How long a commit's first delivery waits for the lookups that began before it among its
participants; past it the delivery goes ahead and those lookups answer 503 instead."""

# -- clients (gateway, coordinator) -----------------------------------------------------------

CHANNEL_RETRY_BUDGET_SECONDS = 15.0
"""How long a channel call keeps retrying through a failover before it gives up."""

CHANNEL_RETRY_BACKOFF_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
CHANNEL_REQUEST_TIMEOUT_SECONDS = 5.0
"""One request on a channel (a batch, or a route lookup)."""

CROSS_BATCH_TIMEOUT_SECONDS = 12.0
"""One cross-shard batch sent to the coordinator: it may wait out a reconfiguration
(``RECONFIGURE_WAIT_SECONDS``) before it answers."""

ROUTES_TIMEOUT_SECONDS = 2.0
ROUTES_FRESH_SECONDS = 0.05
"""Concurrent lookups within this window share one answer."""

ROUTES_REFRESH_SECONDS = 1.0
"""How often a directory follows the routes in the background."""

ROUTES_ASK_TIMEOUT_SECONDS = 0.5
"""One replica's answer to a route lookup."""


def _require(condition: bool, relation: str) -> None:
    if not condition:
        raise RuntimeError(f"timing constants break their relation: {relation}")


_require(
    DEAD_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS,
    "a replica is declared lost only after three missed heartbeats",
)
_require(
    LEASE_ASK_TIMEOUT_SECONDS + HEARTBEAT_SECONDS < LEASE_SECONDS,
    "a lease ask that times out is followed by another while the lease still holds",
)
_require(
    LEASE_MARGIN_SECONDS >= 0.1 * LEASE_SECONDS,
    "the margin covers clock rates that differ by up to 5 % between two machines",
)
_require(
    HEARTBEAT_SECONDS * 2 <= LEASE_SECONDS,
    "a primary renews its lease at least twice per lease",
)
_require(
    HEARTBEAT_SECONDS + MONITOR_SECONDS + CONTROLLER_STALL_SECONDS < DEAD_AFTER_SECONDS,
    "the controller notices its own stall before it would count a replica lost",
)
_require(
    BACKUP_SILENT_SECONDS > DEAD_AFTER_SECONDS,
    "a backup's primary gets the chance to vouch for it before silence alone condemns it",
)
_require(MONITOR_SECONDS < HEARTBEAT_SECONDS, "the monitor looks more often than replicas report")
_require(
    CATCH_UP_HOLD_SECONDS < SHIP_TIMEOUT_SECONDS / 2,
    "a backup holding a record back while it catches up answers well before its primary "
    "gives up on it",
)
_require(
    SHIP_TIMEOUT_SECONDS < CHANNEL_RETRY_BUDGET_SECONDS,
    "a client outlasts a primary giving up on its backup",
)
_require(
    DEAD_AFTER_SECONDS + LEASE_SECONDS + LEASE_MARGIN_SECONDS < CHANNEL_RETRY_BUDGET_SECONDS,
    "a client keeps retrying for longer than detection plus the lease wait of a failover",
)
_require(
    CHANNEL_REQUEST_TIMEOUT_SECONDS < CHANNEL_RETRY_BUDGET_SECONDS,
    "a channel retries at least once within its budget",
)
_require(
    SHARD_CALL_TIMEOUT_SECONDS <= CHANNEL_RETRY_BUDGET_SECONDS,
    "a sweep call to one shard gives up no later than a client would",
)
_require(
    PREPARE_DEADLINE_SECONDS > SHIP_TIMEOUT_SECONDS,
    "a primary blocked on a lost backup answers (not now) before it counts as silent",
)
_require(
    PREPARE_DEADLINE_SECONDS >= LEASE_SECONDS,
    "a shard is judged unreachable no sooner than its primary stops serving without its lease",
)
_require(
    RECONFIGURE_WAIT_SECONDS >= PREPARE_DEADLINE_SECONDS,
    "a batch waits for a reconfiguring shard at least as long as for a silent one",
)
_require(
    RECONFIGURE_WAIT_SECONDS + PREPARE_DEADLINE_SECONDS + DELIVERY_WAIT_SECONDS
    < CROSS_BATCH_TIMEOUT_SECONDS,
    "a gateway's cross-shard batch outlasts the coordinator's waits for reconfiguring shards "
    "and its log, a commit delivery that runs out, and the commit's wait for earlier lookups",
)
_require(
    CROSS_BATCH_TIMEOUT_SECONDS < CHANNEL_RETRY_BUDGET_SECONDS,
    "a cross-shard batch is tried again within its channel's budget",
)
_require(
    LOOKUP_WAIT_SECONDS + PREPARE_DEADLINE_SECONDS < CHANNEL_REQUEST_TIMEOUT_SECONDS,
    "a gateway's lookup call outlasts the read barrier's wait and a read that runs out",
)
_require(ROUTES_FRESH_SECONDS < ROUTES_REFRESH_SECONDS, "shared lookups are fresher than refreshes")
_require(SNAPSHOT_EVERY_RECORDS > 0, "snapshots are taken")
