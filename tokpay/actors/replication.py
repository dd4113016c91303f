"""Replication factor 2: a primary's log records count only once its backup has them.

The primary appends each batch's record to its own log and ships the same record,
with its epoch and sequence, to the backup's channel; the backup appends it verbatim
(``WriteAheadLog.append(..., sequence=)``), fsyncs, applies it (a hot standby) and
answers. Only then is the batch answered. The two fsyncs overlap: the record is sent
before the local write starts.

Fencing is by epoch. A backup accepts records of exactly its own epoch, and a
promoted backup accepts none, so a primary that the controller has replaced can no
longer make anything durable on two machines, hence can acknowledge nothing. Reads
are fenced by a lease the primary holds from its backup (``Lease``, ``LeaseGrants``,
``BackupLeaseAsk``; PacificA's rule): the backup waits its own last grant out before it
serves as a primary, so the controller is off the data path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from tokpay.actors.channel import NotPrimary, frame, read_frame
from tokpay.actors.protocol import ChannelAddress, InstallBegin, ShippedRecord, encode
from tokpay.actors.timing import (
    HEARTBEAT_SECONDS,
    INSTALL_TIMEOUT_SECONDS,
    LEASE_ASK_TIMEOUT_SECONDS,
    LEASE_MARGIN_SECONDS,
    LEASE_SECONDS,
    SHIP_TIMEOUT_SECONDS,
)
from tokpay.wal import WriteAheadLog

log = logging.getLogger("tokpay.replication")


class Role(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"
    FENCED = "fenced"


class ReplicationFailed(Exception):
    """The backup did not make a record durable; the primary must not acknowledge it."""


INSTALL_METHODS = frozenset({"install_state", "install_chunk", "install_end"})
"""The frames of a state copy, sent on a connection of its own after ``install_begin``."""


INSTALL_CHUNK_BYTES = 4 * 1024 * 1024
"""A state copy travels in chunks, each well under the channel's frame limit."""

INSTALL_PART = "install.part"


class InstallReceiver:
    """A backup's side of a state copy: a header, chunks written to a file, an end.

    The copy goes to ``root/install.part`` as it arrives (never whole in memory); at the
    end the file is fsynced and handed over with the sequence it holds.
    """

    def __init__(self) -> None:
        self._header: InstallBegin | None = None
        self._file: BinaryIO | None = None
        self._received = 0

    def receive(
        self, method: str, payload: bytes, epoch: int, root: Path
    ) -> tuple[Path, int] | None:
        """One frame; at ``install_end``, (the copy's path, its sequence)."""
        if method == "install_state":
            header = msgspec.msgpack.decode(payload, type=InstallBegin)
            if header.epoch != epoch:
                raise NotPrimary(f"install of epoch {header.epoch} refused at epoch {epoch}")
            self._close()
            self._header, self._received = header, 0
            self._file = open(root / INSTALL_PART, "wb")  # noqa: SIM115 (spans frames)
            return None
        current, stream = self._header, self._file
        if current is None or stream is None:
            raise ValueError(f"{method} without install_state")
        header = current
        if method == "install_chunk":
            if self._received + len(payload) > header.size:
                raise ValueError("install larger than announced")
            stream.write(payload)
            self._received += len(payload)
            return None
        if self._received != header.size:
            raise ValueError("install incomplete")
        stream.flush()
        os.fsync(stream.fileno())
        self._close()
        self._header = None
        return root / INSTALL_PART, header.sequence

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def send_state(epoch: int, address: ChannelAddress, copy: Path, sequence: int) -> None:
    """Stream a state copy to the backup at ``address`` on a connection of its own."""
    size = copy.stat().st_size
    link = BackupLink(address)
    try:
        link.call(
            "install_state", encode(InstallBegin(epoch, sequence, size)), INSTALL_TIMEOUT_SECONDS
        )
        with open(copy, "rb") as stream:
            while chunk := stream.read(INSTALL_CHUNK_BYTES):
                link.call("install_chunk", chunk, INSTALL_TIMEOUT_SECONDS)
        link.call("install_end", b"", INSTALL_TIMEOUT_SECONDS)
    finally:
        link.close()


class BackupLink:
    """A blocking connection from a primary to its backup's channel."""

    def __init__(self, address: ChannelAddress, timeout: float = SHIP_TIMEOUT_SECONDS) -> None:
        host, port, token = address
        self.address = address
        self._sock = socket.create_connection((host, port), timeout=timeout)
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

    def attach(self, epoch: int, address: ChannelAddress) -> int:
        """Make the replica at ``address`` this log's backup from the next record on.

        Called with the owner's lock held. The backup starts an empty log after
        ``last_sequence`` and keeps every later record from now on; the state up to it
        follows as a copy (``send_state``), after which the backup can take over. Clears
        a broken state: the copy includes any record the old backup never acknowledged.
        """
        if epoch < self.epoch:
            raise ValueError(f"epoch {epoch} is older than the log's epoch {self.epoch}")
        if self.backup is not None:
            self.backup.close()
            self.backup = None
        link = BackupLink(address)
        try:
            begin = InstallBegin(epoch, self.wal.last_sequence, 0)
            link.call("install_begin", encode(begin), INSTALL_TIMEOUT_SECONDS)
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
    """A primary serves only while it holds a lease from its backup.

    The primary notes the time *before* it asks; the backup notes its grant *after* the
    ask arrived and, once promoted, serves nothing until that grant + ``LEASE_SECONDS`` +
    ``LEASE_MARGIN_SECONDS`` has passed on its own clock (``LeaseGrants.close``), so the
    old primary's lease always ends first (docs/ARCHITECTURE.md, "Why an old primary
    cannot act"). ``not_before`` holds a new primary back until then.
    """

    def __init__(self, *, forever: bool) -> None:
        self._until = float("inf") if forever else 0.0
        self._not_before = 0.0

    def valid(self) -> bool:
        now = time.monotonic()
        return self._not_before <= now < self._until

    def extend_from(self, asked_at: float) -> None:
        self._until = max(self._until, asked_at + LEASE_SECONDS)

    def hold_until(self, moment: float) -> None:
        """Serve nothing before ``moment`` (a lease another primary may still hold)."""
        self._not_before = max(self._not_before, moment)

    def revoke(self) -> None:
        self._until = 0.0


class LeaseGrants:
    """A backup's side of its primary's lease: each grant is a promise not to serve as a
    primary until it has run out. ``close`` ends granting for good (promotion, fencing)
    and says when the last grant is over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._open = True

    def grant(self) -> bool:
        with self._lock:
            if not self._open:
                return False
            self._last = time.monotonic()
            return True

    def close(self) -> float:
        """Grant nothing more; the moment (monotonic) the last grant has surely ended."""
        with self._lock:
            self._open = False
            last = self._last
        return 0.0 if last is None else last + LEASE_SECONDS + LEASE_MARGIN_SECONDS


class BackupLeaseAsk:
    """The primary's connection for lease asks, kept apart from the shipping one (which
    the apply path holds under its lock) and re-made when the backup changes."""

    def __init__(self) -> None:
        self._link: BackupLink | None = None
        self.refusal = ""
        """Why the last ask was not granted (for the log)."""

    def ask(self, address: ChannelAddress | None, epoch: int) -> bool:
        if address is None:
            self.close()
            self.refusal = "no backup"
            return False
        try:
            if self._link is None or self._link.address != address:
                self.close()
                self._link = BackupLink(address, timeout=LEASE_ASK_TIMEOUT_SECONDS)
            self._link.call("lease", encode(epoch), LEASE_ASK_TIMEOUT_SECONDS)
        except (OSError, ReplicationFailed, msgspec.DecodeError, ConnectionError) as error:
            self.close()
            self.refusal = repr(error)
            return False
        return True

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None


STARVED_SECONDS = 0.3
"""A heartbeat or lease thread that runs this much later than due says so in the log."""


class Heartbeat:
    """Calls ``report`` every HEARTBEAT_SECONDS on a thread of its own and hands each answer,
    with the moment it was asked, to ``on_answer``; a failed call changes nothing.

    Two run in every cluster replica: its report to the controller (routes, fencing), and a
    primary's lease ask to its backup. Apart from the apply path, neither a busy shard nor
    a lost head stops the other.
    """

    def __init__(
        self,
        report: Callable[[], Any],
        on_answer: Callable[[float, Any], None],
        name: str = "heartbeat",
    ) -> None:
        self._name = name
        self._report = report
        self._on_answer = on_answer
        self._stop = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            asked_at = time.monotonic()
            if asked_at - due > STARVED_SECONDS:
                log.warning("%s thread ran %.2f s late (CPU starved?)", self._name, asked_at - due)
            try:
                answer = self._report()
            except Exception as error:
                log.debug("heartbeat failed: %r", error)
            else:
                self._on_answer(asked_at, answer)
            due = time.monotonic() + HEARTBEAT_SECONDS
            self._stop.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self._stop.set()
