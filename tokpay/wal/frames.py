"""The on-disk record format of the write-ahead log: frames, their checks, and its errors.

A record is framed as ``[length: u32 LE][crc32c: u32 LE][msgpack [epoch, sequence, body]]``;
the crc covers the length bytes and the payload, so a flipped length bit is caught too.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import msgspec

from tokpay.wal.errors import WalCorruption

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


@dataclass(frozen=True, slots=True)
class LogRecord:
    epoch: int
    sequence: int
    payload: bytes


class _FrameError(Exception):
    """A frame that does not parse: torn or corrupt, the caller decides which."""

    offset = 0
    """Where the frame starts in its file (set by ``_frames_of``)."""


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


def _frames_of(stream: BinaryIO, limit: int) -> Iterator[tuple[int, LogRecord]]:
    """Each frame from the stream's position up to ``limit``, with the offset it starts at.

    A frame that does not parse raises ``_FrameError`` carrying that offset; the stream is
    then left just past what was read of it.
    """
    while True:
        offset = stream.tell()
        try:
            record = _read_frame(stream, limit)
        except _FrameError as exc:
            exc.offset = offset
            raise
        if record is None:
            return
        yield offset, record


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
