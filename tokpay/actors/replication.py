"""Replication factor 2: a primary's log records count only once its backup has them.

The primary appends each batch's record to its own log and ships the same record,
with its epoch and sequence, to the backup's channel; the backup appends it verbatim
(``WriteAheadLog.append(..., sequence=)``), fsyncs, applies it (a hot standby) and
answers. Only then is the batch answered. The two fsyncs overlap: the record is sent
before the local write starts.

Fencing is by epoch. A backup accepts records of exactly its own epoch, and a
promoted backup accepts none, so a primary that the controller has replaced can no
longer make anything durable on two machines, hence can acknowledge nothing. Reads
are fenced by a lease (see ``Lease``) that the controller waits out before it
promotes a backup.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import msgspec

from tokpay.actors.channel import NotPrimary, frame, read_frame
from tokpay.actors.protocol import ChannelAddress, Install, InstallBegin, ShippedRecord, encode
from tokpay.actors.timing import (
    HEARTBEAT_SECONDS,
    INSTALL_TIMEOUT_SECONDS,
    LEASE_SECONDS,
    SHIP_TIMEOUT_SECONDS,
)
from tokpay.wal import MAX_SNAPSHOT_BYTES, WriteAheadLog

log = logging.getLogger("tokpay.replication")


class Role(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"
    FENCED = "fenced"


class ReplicationFailed(Exception):
    """The backup did not make a record durable; the primary must not acknowledge it."""


INSTALL_METHODS = frozenset({"install_begin", "install_chunk", "install_end"})


INSTALL_CHUNK_BYTES = 4 * 1024 * 1024
"""A snapshot travels in chunks, each well under the channel's frame limit."""


class InstallReceiver:
    """A backup's side of a chunked install: begin, chunks, end -> ``Install``."""

    def __init__(self) -> None:
        self._header: InstallBegin | None = None
        self._buffer = bytearray()

    def begin(self, payload: bytes, epoch: int) -> None:
        header = msgspec.msgpack.decode(payload, type=InstallBegin)
        if header.epoch != epoch:
            raise NotPrimary(f"install of epoch {header.epoch} refused at epoch {epoch}")
        if not 0 <= header.size <= MAX_SNAPSHOT_BYTES:
            raise ValueError(f"snapshot of {header.size} bytes exceeds {MAX_SNAPSHOT_BYTES}")
        self._header = header
        self._buffer = bytearray()

    def chunk(self, payload: bytes) -> None:
        if self._header is None:
            raise ValueError("install chunk without a beginning")
        if len(self._buffer) + len(payload) > self._header.size:
            raise ValueError("install larger than announced")
        self._buffer += payload

    def receive(self, method: str, payload: bytes, epoch: int) -> Install | None:
        """One install frame (``install_begin|chunk|end``); the whole Install at the end."""
        if method == "install_begin":
            self.begin(payload, epoch)
        elif method == "install_chunk":
            self.chunk(payload)
        else:
            return self.end()
        return None

    def end(self) -> Install:
        header = self._header
        if header is None or len(self._buffer) != header.size:
            raise ValueError("install incomplete")
        install = Install(header.epoch, header.sequence, bytes(self._buffer))
        self._header, self._buffer = None, bytearray()
        return install


class BackupLink:
    """A blocking connection from a primary to its backup's channel."""

    def __init__(self, address: ChannelAddress) -> None:
        host, port, token = address
        self.address = address
        self._sock = socket.create_connection((host, port), timeout=SHIP_TIMEOUT_SECONDS)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(frame(token))

    def send(self, method: str, payload: bytes, timeout: float = SHIP_TIMEOUT_SECONDS) -> None:
        self._sock.settimeout(timeout)
        self._sock.sendall(frame(msgspec.msgpack.encode((method, payload))))

    def call(self, method: str, payload: bytes, timeout: float) -> bytes:
        self.send(method, payload, timeout)
        return self.receive(timeout)

    def receive(self, timeout: float = SHIP_TIMEOUT_SECONDS) -> bytes:
        self._sock.settimeout(timeout)
        ok, result = msgspec.msgpack.decode(read_frame(self._sock), type=tuple[bool, bytes])
        if not ok:
            code, detail = msgspec.msgpack.decode(result, type=tuple[str, str])
            raise ReplicationFailed(f"backup refused: {code}: {detail}")
        return bytes(result)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class ReplicatedLog:
    """A write-ahead log whose appends are also durable on a backup before they count.

    ``required`` is False only in the single-node default (one copy, said plainly in
    the README); then appends are local only.
    """

    def __init__(self, wal: WriteAheadLog, epoch: int, *, required: bool) -> None:
        self.wal = wal
        self.epoch = max(epoch, wal.last_epoch)
        self.required = required
        self.backup: BackupLink | None = None
        # Set when a record reached the local log but not the backup: memory is ahead
        # of what may be shown, so nothing is served until the controller reconfigures.
        self.broken: str | None = None

    @property
    def last_sequence(self) -> int:
        return self.wal.last_sequence

    def check_writable(self) -> None:
        if self.broken is not None:
            raise NotPrimary(f"replication broken ({self.broken}); waiting for a new backup")
        if self.required and self.backup is None:
            raise NotPrimary("no backup in sync yet; retry shortly")

    def append(self, payload: bytes) -> int:
        """Durable locally and on the backup, or ``ReplicationFailed`` (log now broken).

        A local write failure propagates (the caller stops the process: a failed fsync
        is never retried).
        """
        sequence = self.wal.last_sequence + 1
        link = self.backup
        sent = False
        if link is not None:
            try:
                link.send("replicate", encode(ShippedRecord(self.epoch, sequence, payload)))
                sent = True
            except OSError as error:
                self._break(f"send failed: {error!r}")
        self.wal.append(self.epoch, payload)
        if link is None:
            if self.required:
                raise ReplicationFailed("no backup")
            return sequence
        if not sent:
            raise ReplicationFailed(self.broken or "send failed")
        try:
            link.receive()
        except (OSError, ReplicationFailed, msgspec.DecodeError, ConnectionError) as error:
            self._break(f"backup did not acknowledge: {error!r}")
            raise ReplicationFailed(str(error)) from error
        return sequence

    def _break(self, reason: str) -> None:
        if self.broken is None:
            log.error("replication to %s broken: %s", self.backup and self.backup.address, reason)
        self.broken = reason
        if self.backup is not None:
            self.backup.close()
            self.backup = None

    def attach(self, epoch: int, address: ChannelAddress, snapshot: bytes) -> int:
        """Make the replica at ``address`` this log's backup from ``snapshot``.

        Called with the owner's lock held, so ``snapshot`` is the state at exactly
        ``last_sequence``; every later record is shipped. Clears a broken state: the
        snapshot includes any record the old backup never acknowledged.
        """
        if epoch < self.epoch:
            raise ValueError(f"epoch {epoch} is older than the log's epoch {self.epoch}")
        if self.backup is not None:
            self.backup.close()
            self.backup = None
        link = BackupLink(address)
        try:
            begin = InstallBegin(epoch, self.wal.last_sequence, len(snapshot))
            link.call("install_begin", encode(begin), INSTALL_TIMEOUT_SECONDS)
            for start in range(0, len(snapshot), INSTALL_CHUNK_BYTES):
                chunk = snapshot[start : start + INSTALL_CHUNK_BYTES]
                link.call("install_chunk", chunk, INSTALL_TIMEOUT_SECONDS)
            link.call("install_end", b"", INSTALL_TIMEOUT_SECONDS)
        except BaseException:
            link.close()
            raise
        self.epoch = epoch
        self.backup = link
        self.broken = None
        return self.wal.last_sequence

    def detach(self, epoch: int) -> None:
        """Go on without a backup at ``epoch`` (writes wait for the next ``attach``)."""
        self.epoch = max(self.epoch, epoch)
        if self.backup is not None:
            self.backup.close()
            self.backup = None


class Lease:
    """A primary serves reads only while it holds a lease from the controller.

    The primary notes the time *before* asking; the controller notes its grant after
    receiving the request, so the primary's lease always ends before the controller's
    view of it does, and the controller waits its own view out before promoting.
    """

    def __init__(self, *, forever: bool) -> None:
        self._until = float("inf") if forever else 0.0

    def valid(self) -> bool:
        return time.monotonic() < self._until

    def extend_from(self, asked_at: float) -> None:
        self._until = max(self._until, asked_at + LEASE_SECONDS)

    def revoke(self) -> None:
        self._until = 0.0


class Heartbeat:
    """Reports this replica to the controller every HEARTBEAT_SECONDS, on its own thread.

    ``report`` returns the controller's answer; ``on_answer`` applies it. A failed
    report leaves the lease to run out by itself.
    """

    def __init__(
        self,
        report: Callable[[], Any],
        on_answer: Callable[[float, Any], None],
    ) -> None:
        self._report = report
        self._on_answer = on_answer
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked_at = time.monotonic()
            try:
                answer = self._report()
            except Exception as error:
                log.debug("heartbeat failed: %r", error)
            else:
                self._on_answer(asked_at, answer)
            self._stop.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self._stop.set()
