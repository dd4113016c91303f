"""Append-only, checksummed, segmented write-ahead log of opaque byte records.

Each record carries an epoch and a sequence number and is framed on disk as
``[length: u32 LE][crc32c: u32 LE][msgpack [epoch, sequence, body]]``; the crc covers the
length bytes and the payload, so a flipped length bit is caught too. Records live in segment
files named ``{first_sequence:020d}.wal``. Opening a log verifies every record; only a torn
final append is repaired (truncated), anything else raises ``WalCorruption``. The log knows
files and bytes only: what a body means is the caller's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from tokpay.wal._files import fsync_directory
from tokpay.wal.errors import RecordTooLarge, SequenceGap, StaleEpoch, WalError, WalFatalIOError
from tokpay.wal.frames import (
    _FIRST_SEQUENCE,
    _MAX_U64,
    DEFAULT_SEGMENT_BYTES,
    MAX_RECORD_BYTES,
    LogRecord,
    _corruption,
    _encode_frame,
    _FrameError,
    _frames_of,
    _Segment,
    _segment_name,
)
from tokpay.wal.segments import _create_segment_file, _load_segments


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
                try:
                    for _, record in _frames_of(stream, size):
                        if record.sequence > after_sequence:
                            yield record
                except _FrameError as exc:
                    problem = f"changed since open: {exc}"
                    raise _corruption(path, exc.offset, problem) from exc

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
