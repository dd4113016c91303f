"""A direct TCP channel into a shard, beside Ray, for the hot paths and for 2PC.

Measured here, one Ray actor call costs about 1 ms and caps a caller near 1,500
calls/s; after batching, that per-call cost is what limits balance reads and
transfer submits. So a shard also listens on a plain socket: frames of
``[u32 length][msgpack [method, payload]]`` answered by ``[u32 length][msgpack
[ok, result]]``, one request at a time per connection. Ray still places, restarts
and fences the shard; the channel's address is fetched through Ray, and a
restarted shard listens on a new port, so a stale connection simply fails.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable

import msgspec

from tokpay.actors.protocol import ChannelAddress
from tokpay.actors.timing import (
    CHANNEL_REQUEST_TIMEOUT_SECONDS,
    CHANNEL_RETRY_BACKOFF_SECONDS,
    CHANNEL_RETRY_BUDGET_SECONDS,
)
from tokpay.ledger.errors import ErrorCode, LedgerError

log = logging.getLogger("tokpay.channel")

FRAME_HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 256
"""Open channel connections one shard accepts (gateway processes x shards is far below)."""

Dispatch = Callable[[str, bytes], bytes]


class ChannelError(Exception):
    """The peer broke the framing or refused the request."""


class NotPrimary(Exception):
    """This replica may not serve the request now: it is a backup, fenced, without a
    read lease, or without an in-sync backup. The caller looks the primary up again
    and retries (every request on the channel is safe to repeat)."""


NOT_PRIMARY_CODE = "not_primary"


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes:
    (length,) = FRAME_HEADER.unpack(recv_exact(sock, FRAME_HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return recv_exact(sock, length)


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def _refusal(method: str, error: Exception) -> bytes:
    """A failed request's reply: the LedgerError's code, or internal_error."""
    if isinstance(error, LedgerError):
        body = (str(error.code), error.detail)
    elif isinstance(error, NotPrimary):
        body = (NOT_PRIMARY_CODE, str(error))
    else:
        log.exception("channel request %s failed", method, exc_info=error)
        body = (str(ErrorCode.INTERNAL_ERROR), f"{method} failed: {error!r}")
    return msgspec.msgpack.encode((False, msgspec.msgpack.encode(body)))


class ChannelServer:
    """Accepts connections on a thread each and answers through ``dispatch``."""

    def __init__(self, dispatch: Dispatch, host: str = "127.0.0.1") -> None:
        self._dispatch = dispatch
        self._listener = socket.create_server((host, 0))
        # A caller proves it got the address through Ray (which authenticates it)
        # by sending this token first; anything else on the port is dropped.
        self._token = secrets.token_bytes(32)
        self.address = (host, self._listener.getsockname()[1], self._token)
        self._connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="channel-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            connection, _ = self._listener.accept()
            with self._lock:
                if self._connections >= MAX_CONNECTIONS:
                    connection.close()
                    continue
                self._connections += 1
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(connection,), name="channel-conn", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if not hmac.compare_digest(read_frame(connection), self._token):
                return
            while True:
                method, payload = msgspec.msgpack.decode(
                    read_frame(connection), type=tuple[str, bytes]
                )
                try:
                    reply = msgspec.msgpack.encode((True, self._dispatch(method, payload)))
                except Exception as error:
                    reply = _refusal(method, error)
                connection.sendall(frame(reply))
        except (ConnectionError, OSError, ChannelError, msgspec.DecodeError):
            pass
        finally:
            connection.close()
            with self._lock:
                self._connections -= 1


AsyncDispatch = Callable[[str, bytes], Awaitable[bytes]]


async def read_frame_async(reader: asyncio.StreamReader) -> bytes:
    (length,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return await reader.readexactly(length)


class AsyncChannelServer:
    """The same channel served from an asyncio loop (the coordinator's async actor).

    Each connection's requests are awaited one after another; connections run
    side by side, so two gateways' batches overlap inside the coordinator.
    """

    def __init__(self, dispatch: AsyncDispatch) -> None:
        self._dispatch = dispatch
        self._token = secrets.token_bytes(32)
        self._server: asyncio.Server | None = None
        self.address: ChannelAddress | None = None

    async def start(self, host: str = "127.0.0.1") -> ChannelAddress:
        if self.address is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = (host, port, self._token)
        return self.address

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not hmac.compare_digest(await read_frame_async(reader), self._token):
                return
            while True:
                method, payload = msgspec.msgpack.decode(
                    await read_frame_async(reader), type=tuple[str, bytes]
                )
                try:
                    reply = msgspec.msgpack.encode((True, await self._dispatch(method, payload)))
                except Exception as error:
                    reply = _refusal(method, error)
                writer.write(frame(reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ChannelError, msgspec.DecodeError):
            pass
        finally:
            writer.close()


# -- caller side ------------------------------------------------------------------------


AddressLookup = Callable[[], Awaitable[ChannelAddress]]


class ActorChannel:
    """One connection to whoever currently serves a shard (or the coordinator).

    ``lookup`` says where that is; it is asked again after any failure, so a
    failover is a reconnect. Every request on the channel is safe to repeat.
    """

    def __init__(self, lookup: AddressLookup) -> None:
        self._lookup = lookup
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def call(
        self,
        method: str,
        payload: bytes,
        *,
        quiet: float | None = None,
        budget: float = CHANNEL_RETRY_BUDGET_SECONDS,
        timeout: float = CHANNEL_REQUEST_TIMEOUT_SECONDS,
    ) -> bytes:
        """Send one request, retrying through failovers for up to ``budget`` seconds, each
        try waiting up to ``timeout`` for its answer.

        With ``quiet``: ``TimeoutError`` as soon as the other end has said nothing at all
        for that long. A replica that refuses (not the primary, no backup yet) or a host
        that refuses the connection still answers, so a reconfiguring group is waited
        for; a stopped or cut-off one is given up on at once.
        """
        request = frame(msgspec.msgpack.encode((method, payload)))
        async with self._lock:
            deadline = time.monotonic() + budget
            # Time spent waiting on the other end since it last answered (our own pauses
            # between tries do not count).
            silent = 0.0
            attempt = 0
            while True:
                wait = timeout if quiet is None else min(timeout, quiet - silent)
                sent = time.monotonic()
                try:
                    return await asyncio.wait_for(self._round_trip(request), wait)
                except LedgerError:
                    raise
                except Exception as error:
                    self._close()
                    if isinstance(error, NotPrimary | ConnectionRefusedError):
                        silent = 0.0
                    else:
                        silent += time.monotonic() - sent
                        if quiet is not None and silent >= quiet:
                            raise TimeoutError(f"{method}: no answer for {quiet} s") from error
                    pause = CHANNEL_RETRY_BACKOFF_SECONDS[
                        min(attempt, len(CHANNEL_RETRY_BACKOFF_SECONDS) - 1)
                    ]
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning("channel %s failed (try %d): %r", method, attempt, error)
                    if time.monotonic() + pause > deadline:
                        break
                    await asyncio.sleep(pause)
                except BaseException:
                    # Cancelled mid round trip: the reply may still arrive on this
                    # connection and must never be read as the answer to another call.
                    self._close()
                    raise
        raise LedgerError(ErrorCode.UNAVAILABLE, "the ledger is not reachable; retry later")

    async def _round_trip(self, request: bytes) -> bytes:
        if self._writer is None or self._reader is None:
            host, port, token = await self._lookup()
            self._reader, self._writer = await asyncio.open_connection(host, port)
            self._writer.write(frame(token))
        self._writer.write(request)
        ok, result = msgspec.msgpack.decode(
            await read_frame_async(self._reader), type=tuple[bool, bytes]
        )
        if not ok:
            code, detail = msgspec.msgpack.decode(result, type=tuple[str, str])
            if code == NOT_PRIMARY_CODE:
                raise NotPrimary(detail)
            raise LedgerError(ErrorCode(code), detail)
        return result

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
