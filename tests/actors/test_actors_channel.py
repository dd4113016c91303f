"""The direct shard channel on real sockets: token handshake, framing bounds, retries."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import msgspec
import pytest

from tokpay.actors.channel import (
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    ActorChannel,
    ChannelAddress,
    ChannelServer,
    NotPrimary,
    frame,
)
from tokpay.ledger.errors import LedgerError


def _echo(method: str, payload: bytes) -> bytes:
    if method != "echo":
        raise ValueError(f"no method {method}")
    return payload[::-1]


def _raw_request(address: ChannelAddress, first: bytes, second: bytes) -> bytes:
    host, port, _ = address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(first + second)
        try:
            return sock.recv(1024)
        except ConnectionResetError:  # closed with our bytes unread: dropped all the same
            return b""


def test_calls_round_trip_and_errors_are_reported() -> None:
    server = ChannelServer(_echo)

    async def lookup() -> ChannelAddress:
        return server.address

    async def scenario() -> None:
        channel = ActorChannel(lookup)
        assert await channel.call("echo", b"abc") == b"cba"
        results = await asyncio.gather(*(channel.call("echo", bytes([n])) for n in range(50)))
        assert results == [bytes([n]) for n in range(50)]
        with pytest.raises(LedgerError) as refused:
            await channel.call("drop_tables", b"")
        assert refused.value.code == "internal_error"

    asyncio.run(scenario())


def test_connections_without_the_token_are_dropped() -> None:
    server = ChannelServer(_echo)
    request = frame(msgspec.msgpack.encode(("echo", b"abc")))
    assert _raw_request(server.address, frame(b"wrong token"), request) == b""
    assert _raw_request(server.address, request, b"") == b""
    reply = _raw_request(server.address, frame(server.address[2]), request)
    assert msgspec.msgpack.decode(reply[FRAME_HEADER.size :]) == [True, b"cba"]


def test_oversized_frames_close_the_connection() -> None:
    server = ChannelServer(_echo)
    huge_header = FRAME_HEADER.pack(MAX_FRAME_BYTES + 1)
    assert _raw_request(server.address, frame(server.address[2]), huge_header) == b""


def test_a_restarted_peer_is_found_again_through_lookup() -> None:
    servers = [ChannelServer(_echo)]

    async def lookup() -> ChannelAddress:
        return servers[-1].address

    async def scenario() -> None:
        channel = ActorChannel(lookup)
        assert await channel.call("echo", b"12") == b"21"
        servers.append(ChannelServer(_echo))  # the "restarted" shard, on a new port
        servers[0]._listener.close()
        channel._close()  # as a reset connection would
        assert await channel.call("echo", b"34") == b"43"

    asyncio.run(scenario())


def test_quiet_waits_out_a_refusing_peer_but_not_a_silent_one() -> None:
    """With ``quiet``, a peer that keeps answering "not the primary" is retried (a group
    reconfiguring), while one that says nothing (stopped, cut off) fails within ``quiet``."""
    refusals = 8
    answered = threading.Event()

    def reconfiguring(method: str, payload: bytes) -> bytes:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise NotPrimary("no backup in sync yet; retry shortly")
        answered.set()
        return payload

    busy = ChannelServer(reconfiguring)
    # A listening socket nobody serves: the connection is accepted, nothing ever answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()

    async def at(address: ChannelAddress) -> ChannelAddress:
        return address

    async def scenario() -> None:
        waited = ActorChannel(lambda: at(busy.address))
        started = time.monotonic()
        assert await waited.call("x", b"ok", quiet=0.3, budget=10) == b"ok"
        # The refusals alone took longer than the quiet limit: they counted as answers.
        assert answered.is_set() and time.monotonic() - started > 0.3
        host, port = silent.getsockname()
        cut = ActorChannel(lambda: at((host, port, b"token")))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await cut.call("x", b"", quiet=0.3, budget=10)
        assert time.monotonic() - started < 2.0

    try:
        asyncio.run(scenario())
    finally:
        silent.close()
