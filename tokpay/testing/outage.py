"""Outage maths of a drill: when writes resumed after the kill, the longest time a route
went without an acknowledged write, and the read and write rates per phase.

A route is where a transfer's writes go: one shard (``shard-N``) or, for a transfer
across shards, 2PC (``2pc``). An acknowledgement is (route, submitted at, acknowledged
at), on the monotonic clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

Acknowledgement = tuple[str, float, float]


@dataclass
class Rates:
    reads: float
    writes: float


def resume_seconds(acks: list[Acknowledgement], killed_at: float) -> float | None:
    """Per route, the first acknowledgement of a write submitted after the kill; the
    slowest of them. None until every route that took writes before the kill has taken
    one again."""
    before = {route for route, submitted, _ in acks if submitted < killed_at}
    first: dict[str, float] = {}
    for route, submitted, acked in acks:
        if submitted >= killed_at and route not in first:
            first[route] = acked - killed_at
    if not first or not before <= first.keys():
        return None
    return max(first.values())


def outage_seconds(acks: list[Acknowledgement], killed_at: float, ended_at: float) -> float:
    """The longest time any route went without an acknowledged write after the kill.

    Counts from the kill to the first acknowledgement, between acknowledgements, and
    from the last one to the end of the load. An outage that starts late (a lease
    running out a second after the head dies) is caught too.
    """
    return max((gap for gap, _ in route_outages(acks, killed_at, ended_at).values()), default=0.0)


def route_outages(
    acks: list[Acknowledgement], killed_at: float, ended_at: float
) -> dict[str, tuple[float, float]]:
    """Per route, the longest time it went without an acknowledged write after the kill
    (as ``outage_seconds`` counts it), and when that gap began (seconds after the kill)."""
    times: dict[str, list[float]] = {}
    for route, _, acked in acks:
        if acked >= killed_at:
            times.setdefault(route, []).append(acked)
    worst: dict[str, tuple[float, float]] = {}
    for route in sorted({route for route, _, _ in acks}):
        points = [killed_at, *sorted(times.get(route, [])), ended_at]
        gap, began = max((b - a, a - killed_at) for a, b in itertools.pairwise(points))
        worst[route] = (gap, began)
    return worst


def stalled(acks: list[Acknowledgement], now: float, stall_seconds: float) -> bool:
    """Whether some route that takes writes has had none acknowledged for ``stall_seconds``."""
    last: dict[str, float] = {}
    for route, _, acked in acks:
        last[route] = max(last.get(route, 0.0), acked)
    return any(now - t > stall_seconds for t in last.values())


def rate(stamps: list[float], start: float, end: float) -> float:
    """Events per second among ``stamps`` (completion times) in [start, end)."""
    if end <= start:
        return 0.0
    return sum(1 for t in stamps if start <= t < end) / (end - start)


def phase_rates(
    reads: list[float], writes: list[float], phases: dict[str, tuple[float, float]]
) -> dict[str, Rates]:
    """Reads/s and writes/s in each named phase (start, end)."""
    return {
        phase: Rates(reads=rate(reads, start, end), writes=rate(writes, start, end))
        for phase, (start, end) in phases.items()
    }
