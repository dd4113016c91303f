"""The cluster's route directory on real sockets: it finds the new primaries after every
group failed over at once, without the controller (the gateway's Ray connection may be
dead with the node it was attached to)."""

from __future__ import annotations

import asyncio
import socket

import msgspec

from tokpay.actors.channel import ChannelServer
from tokpay.actors.directory import SEEN_KEPT, ControllerDirectory
from tokpay.actors.protocol import ChannelAddress, Route


def _closed_address() -> ChannelAddress:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ("127.0.0.1", port, b"x" * 32)


def test_routes_are_found_from_an_earlier_backup_when_no_route_names_a_replica() -> None:
    promoted: dict[str, Route] = {}

    def serve(method: str, payload: bytes) -> bytes:
        assert method == "routes"
        return msgspec.msgpack.encode(promoted)

    backup = ChannelServer(serve)
    promoted["shard-0"] = Route(epoch=3, primary="b", address=backup.address)
    old_primary = _closed_address()
    directory = ControllerDirectory()
    # Before the failure: the primary and its backup are known.
    directory._merge(
        {"shard-0": Route(epoch=2, primary="a", address=old_primary, backup=backup.address)}
    )
    # Mid-failover: the newest route names neither a primary nor a backup yet.
    directory._merge({"shard-0": Route(epoch=3, primary=None, address=None)})
    assert directory._routes["shard-0"].address is None

    # No Ray here: asking the controller would fail; the promoted backup answers instead.
    address = asyncio.run(directory.address("shard-0"))
    assert tuple(address) == tuple(backup.address)


def test_the_addresses_remembered_are_bounded() -> None:
    directory = ControllerDirectory()
    for n in range(SEEN_KEPT * 3):
        directory._merge({"shard-0": Route(epoch=n, primary=f"p{n}", address=("h", n, b"t"))})
    assert len(directory._seen) == SEEN_KEPT
    assert ("h", SEEN_KEPT * 3 - 1, b"t") in directory._seen
