"""Waiting for a local cluster's processes to come up: Redis serving on its port, and
Ray nodes registered alive with the GCS after their ``ray start`` finished.

Each wait fails with ClusterError and the tail of the part's log as soon as the part's
session has exited, or after its time limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tokpay.cluster import sessions
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.probes import RayNode, redis_server_pid
from tokpay.cluster.sessions import log_tail, session_running
from tokpay.cluster.state import NodeRecord, RedisRecord

REDIS_START_TIMEOUT_SECONDS = 20.0
NODE_START_TIMEOUT_SECONDS = 90.0
CLOCK_SLACK_MS = 1000
"""A restarted node counts as up once the GCS lists it as registered after the launch
(less this slack); an entry from before is its previous life, not yet declared dead."""
RAY_START_DONE = "Ray runtime started."
"""What ``ray start`` logs once it has set the node up. It still talks to the GCS for a
moment after the raylet registered; a head killed in that window makes it give up."""

NodeTable = Callable[[], list[RayNode] | None]


def wait_redis_serving(record: RedisRecord, host: str, password: str | None) -> None:
    """Until the Redis of ``record`` answers on ``host``:its port."""
    deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
    # Ours answers with its own pid: a Redis of someone else's on the port would not.
    while redis_server_pid(host, record["port"], password) != record["pid"]:
        if not session_running(record):
            raise ClusterError(f"Redis exited while starting:\n{log_tail(record)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"Redis not serving in time:\n{log_tail(record)}")
        time.sleep(sessions.POLL_SECONDS)


def wait_nodes_alive(
    records: dict[str, NodeRecord],
    log_offsets: dict[str, int],
    launched_ms: int,
    node_table: NodeTable,
) -> None:
    """Until the GCS (``node_table``) lists every node of ``log_offsets`` alive,
    registered after ``launched_ms``, and the node's ``ray start`` logged (past its log
    offset) that it is done."""
    names = list(log_offsets)
    deadline = time.monotonic() + NODE_START_TIMEOUT_SECONDS
    while True:
        for name in names:
            if not session_running(records[name]):
                raise ClusterError(f"node {name} exited while starting:\n{log_tail(records[name])}")
        up = {
            name
            for name, offset in log_offsets.items()
            if RAY_START_DONE in sessions.log_since(records[name], offset)
        }
        if up.issuperset(names):
            up &= {
                name
                for entry in node_table() or []
                if entry.alive and entry.start_time_ms >= launched_ms - CLOCK_SLACK_MS
                for name in entry.names
            }
            if up.issuperset(names):
                return
        if time.monotonic() > deadline:
            missing = sorted(set(names) - up)
            tails = "\n".join(f"--- {n}:\n{log_tail(records[n])}" for n in missing)
            raise ClusterError(
                f"nodes {missing} not alive in Ray after {NODE_START_TIMEOUT_SECONDS:.0f} s"
                f"\n{tails}"
            )
        time.sleep(sessions.POLL_SECONDS)
