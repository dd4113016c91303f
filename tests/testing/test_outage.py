"""The drill's outage maths: per-route gaps and where they begin."""

from __future__ import annotations

from tokpay.testing.outage import outage_seconds, resume_seconds, route_outages


def test_route_outages_find_each_routes_longest_gap_and_its_start() -> None:
    killed, ended = 100.0, 120.0
    acks = [
        ("shard-0", 99.0, 99.5),  # before the kill
        ("shard-0", 100.1, 100.3),
        ("shard-0", 100.4, 100.6),
        ("shard-0", 107.0, 107.2),  # a 6.6 s gap from 100.6
        ("shard-0", 119.0, 119.5),  # then 12.3 s from 107.2
        ("2pc", 99.0, 99.2),
        ("2pc", 100.0, 101.0),
        ("2pc", 118.0, 118.5),
    ]
    outages = route_outages(acks, killed, ended)
    assert outages["shard-0"] == (119.5 - 107.2, 107.2 - killed)
    assert outages["2pc"] == (118.5 - 101.0, 101.0 - killed)
    assert outage_seconds(acks, killed, ended) == 118.5 - 101.0
    assert resume_seconds(acks, killed) == 1.0


def test_a_route_silent_after_the_kill_is_out_the_whole_time() -> None:
    acks = [("shard-1", 1.0, 2.0), ("shard-2", 1.0, 2.0), ("shard-2", 5.0, 6.0)]
    outages = route_outages(acks, killed_at=3.0, ended_at=10.0)
    assert outages["shard-1"] == (7.0, 0.0)
    assert outages["shard-2"] == (4.0, 3.0)
    assert resume_seconds(acks, 3.0) is None
