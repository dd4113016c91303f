"""Append-only, checksummed, segmented write-ahead log of opaque byte records.

Each record carries an epoch and a sequence number and is framed on disk as
``[length: u32 LE][crc32c: u32 LE][msgpack [epoch, sequence, body]]``; the crc covers the
length bytes and the payload, so a flipped length bit is caught too. Records live in segment
files named ``{first_sequence:020d}.wal``. Opening a log verifies every record; only a torn
final append is repaired (truncated), anything else raises ``WalCorruption``. The log knows
files and bytes only: what a body means is the caller's business.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import google_crc32c
import msgspec

from tokpay.wal._files import fsync_directory, list_numbered, make_directory

_log = logging.getLogger("tokpay.wal")

MAX_RECORD_BYTES: int = 16 * 1024 * 1024
"""Largest body one record may carry; a bigger one raises ``RecordTooLarge``."""

DEFAULT_SEGMENT_BYTES: int = 64 * 1024 * 1024
"""A new segment file is started rather than let the active one grow past this."""

# Epochs and sequences are msgpack unsigned integers, so they must fit in 64 bits.
_MAX_U64 = 2**64 - 1

_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
_HEADER_BYTES = _HEADER.size

# msgspec writes a 3-tuple as a fixarray, whose first byte is always 0x93. Requiring it makes
# the encoding canonical, and lets the torn-tail scan jump between candidate offsets with
# bytes.find instead of trying every byte in Python.
_ARRAY3_MARKER = b"\x93"

# Worst-case msgpack overhead around a body: fixarray byte, two uint64 (9 bytes each) and a
# bin32 header (5 bytes).
_MAX_ENVELOPE_BYTES = 1 + 9 + 9 + 5
_MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES + _MAX_ENVELOPE_BYTES
_MAX_FRAME_BYTES = _HEADER_BYTES + _MAX_PAYLOAD_BYTES

_SEGMENT_SUFFIX = ".wal"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_SEGMENT_FILE_MODE = 0o644
_FIRST_SEQUENCE = 1

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[int, int, bytes])


class WalError(Exception):
    """Base class of every error the write-ahead log raises on purpose."""


class WalCorruption(WalError):
    """The log on disk is damaged somewhere other than a torn final append."""


class WalFatalIOError(WalError):
    """A write or fsync failed; the log refuses further appends and the owner must stop."""


class RecordTooLarge(WalError, ValueError):
    """A record body is larger than ``MAX_RECORD_BYTES``."""


class StaleEpoch(WalError):
    """An append carried an epoch lower than one already in the log (a fenced-out writer)."""


class SequenceGap(WalError, ValueError):
    """An explicit sequence number was not the one right after the log's last sequence."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    epoch: int
    sequence: int
    payload: bytes


class _FrameError(Exception):
    """A frame that does not parse: torn or corrupt, the caller decides which."""


@dataclass(slots=True)
class _Segment:
    first_sequence: int
    path: Path
    # Bytes of verified records; the file is never read past this.
    size: int
    # first_sequence - 1 while the segment is empty.
    last_sequence: int

    @property
    def is_empty(self) -> bool:
        return self.size == 0


def _segment_name(first_sequence: int) -> str:
    """The file name of the segment whose first record has ``first_sequence``."""
    return f"{first_sequence:020d}{_SEGMENT_SUFFIX}"


def _encode_frame(epoch: int, sequence: int, body: bytes) -> bytes:
    payload = _encoder.encode((epoch, sequence, body))
    crc = google_crc32c.extend(google_crc32c.value(_LENGTH.pack(len(payload))), payload)
    return _HEADER.pack(len(payload), crc) + payload


def _decode_frame(header: bytes, payload: bytes) -> LogRecord:
    """Check a frame whose payload has already been read in full; raise _FrameError if bad."""
    crc = google_crc32c.extend(google_crc32c.value(header[:4]), payload)
    if crc != _LENGTH.unpack_from(header, 4)[0]:
        raise _FrameError("crc mismatch")
    if not payload.startswith(_ARRAY3_MARKER):
        raise _FrameError("payload is not a 3-element msgpack array")
    try:
        epoch, sequence, body = _decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise _FrameError(f"undecodable payload: {exc}") from exc
    if not 0 <= epoch <= _MAX_U64 or not _FIRST_SEQUENCE <= sequence <= _MAX_U64:
        raise _FrameError("epoch or sequence out of range")
    return LogRecord(epoch=epoch, sequence=sequence, payload=body)


def _read_frame(stream: BinaryIO, limit: int) -> LogRecord | None:
    """Read the next frame from ``stream``, not past offset ``limit``.

    Returns None at a clean end (exactly at ``limit``); raises _FrameError otherwise.
    """
    remaining = limit - stream.tell()
    if remaining == 0:
        return None
    if remaining < _HEADER_BYTES:
        raise _FrameError("short header")
    header = stream.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES:
        raise _FrameError("short header")
    (length,) = _LENGTH.unpack_from(header, 0)
    if length > _MAX_PAYLOAD_BYTES:
        raise _FrameError(f"impossible length {length}")
    if length > remaining - _HEADER_BYTES:
        raise _FrameError(f"length {length} runs past the end of the file")
    payload = stream.read(length)
    if len(payload) < length:
        raise _FrameError(f"length {length} runs past the end of the file")
    return _decode_frame(header, payload)


def _contains_valid_frame(data: bytes, start: int) -> bool:
    """Whether any offset at or after ``start`` in ``data`` holds a complete, valid frame."""
    marker_at = data.find(_ARRAY3_MARKER, start + _HEADER_BYTES)
    while marker_at != -1:
        offset = marker_at - _HEADER_BYTES
        (length,) = _LENGTH.unpack_from(data, offset)
        end = marker_at + length
        if length <= _MAX_PAYLOAD_BYTES and end <= len(data):
            try:
                _decode_frame(data[offset:marker_at], data[marker_at:end])
            except _FrameError:
                pass
            else:
                return True
        marker_at = data.find(_ARRAY3_MARKER, marker_at + 1)
    return False


def _corruption(path: Path, offset: int, problem: str) -> WalCorruption:
    return WalCorruption(f"{path} at offset {offset}: {problem}")


class WriteAheadLog:
    """A directory of segment files holding records with contiguous sequence numbers.

    One owner appends (the shard actor); the object is not thread-safe. Create it with
    ``WriteAheadLog.open``.
    """

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        last_epoch: int,
        *,
        segment_bytes: int,
        fsync: bool,
    ) -> None:
        self._directory = directory
        self._segments = segments
        self._last_epoch = last_epoch
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._fd: int | None = os.open(self._active.path, os.O_WRONLY | os.O_APPEND)
        self._poisoned: str | None = None

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        floor: int = 0,
    ) -> WriteAheadLog:
        """Open (creating if needed) the log in ``directory``, verifying every record.

        A torn record at the very end of the newest segment is cut off; any other damage
        raises ``WalCorruption`` naming the file and offset. ``floor`` applies only to a new,
        empty log: its first record will be ``floor + 1`` (a replica installed from a
        snapshot taken at ``floor`` continues the primary's numbering).
        """
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        directory = Path(directory)
        try:
            segments, last_epoch = _load_segments(directory, fsync=fsync, floor=floor)
            return cls(directory, segments, last_epoch, segment_bytes=segment_bytes, fsync=fsync)
        except OSError as exc:
            raise WalFatalIOError(f"opening the log in {directory} failed: {exc}") from exc

    # -------------------------------------------------------------- properties

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def last_sequence(self) -> int:
        """Sequence of the newest record, or the floor below the first segment; 0 if empty."""
        # An empty active segment is named after the next sequence, so it carries the floor
        # even when it is the only file left.
        return self._active.last_sequence

    @property
    def last_epoch(self) -> int:
        """Epoch of the newest record still on disk; 0 when the log holds no record."""
        return self._last_epoch

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    # ----------------------------------------------------------------- writing

    def append(self, epoch: int, payload: bytes, *, sequence: int | None = None) -> int:
        """Write one record durably and return its sequence number.

        One ``os.write`` and, with ``fsync``, one ``os.fdatasync``. If either fails the log
        is poisoned: this and every later append raises ``WalFatalIOError``.
        """
        self._check_writable()
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > MAX_RECORD_BYTES:
            raise RecordTooLarge(
                f"record body of {len(payload)} bytes exceeds {MAX_RECORD_BYTES} bytes"
            )
        if not 0 <= epoch <= _MAX_U64:
            raise ValueError(f"epoch must be in 0..{_MAX_U64}, got {epoch}")
        if epoch < self._last_epoch:
            raise StaleEpoch(f"epoch {epoch} is older than the log's epoch {self._last_epoch}")
        expected = self.last_sequence + 1
        if sequence is not None and sequence != expected:
            raise SequenceGap(f"sequence {sequence} given, the log expects {expected}")
        if expected > _MAX_U64:
            raise ValueError("sequence numbers exhausted")

        frame = _encode_frame(epoch, expected, payload)
        active = self._active
        if not active.is_empty and active.size + len(frame) > self._segment_bytes:
            self._roll(expected)
            active = self._active
        fd = self._fd
        if fd is None:
            raise WalError("write-ahead log is closed")
        try:
            written = os.write(fd, frame)
        except OSError as exc:
            raise self._poison(f"write to {active.path} failed: {exc}") from exc
        if written != len(frame):
            # The tail is now torn; reopening the log will cut it off.
            raise self._poison(f"short write to {active.path}: {written} of {len(frame)} bytes")
        if self._fsync:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                # Never retry: the kernel may already have dropped the dirty pages.
                raise self._poison(f"fdatasync of {active.path} failed: {exc}") from exc
        active.size += len(frame)
        active.last_sequence = expected
        self._last_epoch = epoch
        return expected

    def truncate_before(self, sequence: int) -> int:
        """Delete whole segments all of whose records are below ``sequence``.

        Call after a snapshot at ``sequence - 1``. The active segment and the segment holding
        the newest record are always kept, so ``last_sequence`` and ``last_epoch`` survive a
        reopen. Returns the number of files deleted.
        """
        self._check_writable()
        if sequence < _FIRST_SEQUENCE:
            raise ValueError(f"sequence must be at least {_FIRST_SEQUENCE}, got {sequence}")
        if sequence > self.last_sequence + 1:
            raise SequenceGap(
                f"cannot truncate before {sequence}: the log ends at {self.last_sequence}"
            )
        # Keeping the newest record on disk is what lets a reopened log still know its last
        # sequence and epoch when a snapshot covers everything.
        keep_from = max(
            (i for i, segment in enumerate(self._segments) if not segment.is_empty),
            default=len(self._segments) - 1,
        )
        doomed = 0
        while doomed < keep_from and self._segments[doomed].last_sequence < sequence:
            doomed += 1
        # Oldest first, so a crash part-way leaves a contiguous run of segments behind.
        for segment in self._segments[:doomed]:
            try:
                segment.path.unlink()
            except OSError as exc:
                raise self._poison(f"deleting {segment.path} failed: {exc}") from exc
        if doomed:
            del self._segments[:doomed]
            self._sync_directory()
        return doomed

    def close(self) -> None:
        """Close the active segment; safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    def records(self, after_sequence: int = 0) -> Iterator[LogRecord]:
        """Re-read records with sequence greater than ``after_sequence`` from disk, in order.

        Yields the records appended before the call; do not call ``truncate_before`` while
        iterating, as it may delete a file the iterator still has to read.
        """
        boundaries = [(s.path, s.size, s.last_sequence) for s in self._segments]
        for path, size, last_sequence in boundaries:
            if size == 0 or last_sequence <= after_sequence:
                continue
            with path.open("rb") as stream:
                while True:
                    offset = stream.tell()
                    try:
                        record = _read_frame(stream, size)
                    except _FrameError as exc:
                        raise _corruption(path, offset, f"changed since open: {exc}") from exc
                    if record is None:
                        break
                    if record.sequence > after_sequence:
                        yield record

    # ---------------------------------------------------------------- internals

    def _check_writable(self) -> None:
        if self._poisoned is not None:
            raise WalFatalIOError(f"log unusable after an I/O error: {self._poisoned}")
        if self._fd is None:
            raise WalError("write-ahead log is closed")

    def _poison(self, reason: str) -> WalFatalIOError:
        self._poisoned = reason
        return WalFatalIOError(reason)

    def _sync_directory(self) -> None:
        if not self._fsync:
            return
        try:
            fsync_directory(self._directory)
        except OSError as exc:
            raise self._poison(f"fsync of directory {self._directory} failed: {exc}") from exc

    def _roll(self, first_sequence: int) -> None:
        path = self._directory / _segment_name(first_sequence)
        try:
            _create_segment_file(path, fsync=self._fsync)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise self._poison(f"creating segment {path} failed: {exc}") from exc
        old_fd, self._fd = self._fd, fd
        self._segments.append(
            _Segment(
                first_sequence=first_sequence,
                path=path,
                size=0,
                last_sequence=first_sequence - 1,
            )
        )
        if old_fd is not None:
            try:
                os.close(old_fd)
            except OSError as exc:
                raise self._poison(f"closing the previous segment failed: {exc}") from exc


def _load_segments(directory: Path, *, fsync: bool, floor: int = 0) -> tuple[list[_Segment], int]:
    """Verify every segment in order; returns them and the epoch of the newest record."""
    if not 0 <= floor < _MAX_U64:
        raise ValueError(f"floor must be in 0..{_MAX_U64 - 1}, got {floor}")
    make_directory(directory, fsync=fsync)
    paths = list_numbered(directory, _SEGMENT_NAME)
    if not paths:
        path = directory / _segment_name(floor + 1)
        _create_segment_file(path, fsync=fsync)
        paths = [(floor + 1, path)]

    segments: list[_Segment] = []
    last_sequence: int | None = None
    last_epoch = 0
    for index, (first_sequence, path) in enumerate(paths):
        is_last = index == len(paths) - 1
        if first_sequence < _FIRST_SEQUENCE:
            raise _corruption(path, 0, "segment name gives sequence 0")
        if last_sequence is not None and first_sequence != last_sequence + 1:
            raise _corruption(
                path, 0, f"segment starts at {first_sequence}, expected {last_sequence + 1}"
            )
        segment, last_epoch = _verify_segment(
            path, first_sequence, last_epoch, is_last=is_last, fsync=fsync
        )
        if segment.is_empty and not is_last:
            # Segments are only created right before an append into them, so an empty
            # one can only be the newest; anywhere else files went missing or were cut.
            raise _corruption(path, 0, "empty segment that is not the newest")
        segments.append(segment)
        last_sequence = segment.last_sequence
    return segments, last_epoch


def _create_segment_file(path: Path, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _SEGMENT_FILE_MODE)
    try:
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_directory(path.parent)


def _verify_segment(
    path: Path, first_sequence: int, last_epoch: int, *, is_last: bool, fsync: bool
) -> tuple[_Segment, int]:
    """Check every record of one segment; cut a torn tail if this is the newest segment.

    Returns the segment and the epoch of its last record (``last_epoch`` if it has none).
    """
    expected = first_sequence
    file_size = path.stat().st_size
    with path.open("rb") as stream:
        while True:
            offset = stream.tell()
            try:
                record = _read_frame(stream, file_size)
            except _FrameError as exc:
                if not is_last:
                    raise _corruption(path, offset, str(exc)) from exc
                _cut_torn_tail(stream, path, offset, file_size, str(exc), fsync=fsync)
                break
            if record is None:
                break
            if record.sequence != expected:
                raise _corruption(path, offset, f"sequence {record.sequence}, expected {expected}")
            if record.epoch < last_epoch:
                raise _corruption(path, offset, f"epoch {record.epoch} goes back from {last_epoch}")
            expected += 1
            last_epoch = record.epoch
    segment = _Segment(
        first_sequence=first_sequence, path=path, size=offset, last_sequence=expected - 1
    )
    return segment, last_epoch


def _cut_torn_tail(
    stream: BinaryIO, path: Path, offset: int, file_size: int, problem: str, *, fsync: bool
) -> None:
    """Truncate at ``offset`` if what follows can only be one torn append; else raise."""
    remaining = file_size - offset
    if remaining > _MAX_FRAME_BYTES:
        raise _corruption(
            path, offset, f"{problem}, with {remaining} bytes after it (more than one record)"
        )
    stream.seek(offset)
    tail = stream.read(remaining)
    if _contains_valid_frame(tail, 1):
        raise _corruption(path, offset, f"{problem}, with valid records after it")
    # Loud on purpose: dropping a tail is right after a crash mid-append, and an
    # operator should still see that it happened and where.
    _log.warning("%s: truncating a torn final record at offset %d (%s)", path, offset, problem)
    try:
        os.truncate(path, offset)
        if fsync:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise WalFatalIOError(f"cutting the torn tail of {path} at {offset}: {exc}") from exc
