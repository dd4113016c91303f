"""Opening a log's segment files: list, verify every record, repair only a torn tail.

A segment is named ``{first_sequence:020d}.wal``. Every record of every segment is
verified on open; only the newest segment's torn final append is truncated, anything
else raises ``WalCorruption``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from tokpay.wal._files import fsync_directory, list_numbered, make_directory
from tokpay.wal.errors import WalFatalIOError
from tokpay.wal.frames import (
    _FIRST_SEQUENCE,
    _MAX_FRAME_BYTES,
    _MAX_U64,
    _SEGMENT_FILE_MODE,
    _SEGMENT_NAME,
    _contains_valid_frame,
    _corruption,
    _FrameError,
    _frames_of,
    _log,
    _Segment,
    _segment_name,
)


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
        try:
            for offset, record in _frames_of(stream, file_size):
                if record.sequence != expected:
                    problem = f"sequence {record.sequence}, expected {expected}"
                    raise _corruption(path, offset, problem)
                if record.epoch < last_epoch:
                    problem = f"epoch {record.epoch} goes back from {last_epoch}"
                    raise _corruption(path, offset, problem)
                expected += 1
                last_epoch = record.epoch
            end = file_size
        except _FrameError as exc:
            if not is_last:
                raise _corruption(path, exc.offset, str(exc)) from exc
            _cut_torn_tail(stream, path, exc.offset, file_size, str(exc), fsync=fsync)
            end = exc.offset
    segment = _Segment(
        first_sequence=first_sequence, path=path, size=end, last_sequence=expected - 1
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
