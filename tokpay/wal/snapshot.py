"""Atomic, checksummed snapshot files of a shard's state, so old log segments can go.

A snapshot at sequence ``s`` is the file ``{s:020d}.snap`` holding
``[b"TPSNAP01"][u64 LE sequence][u32 LE crc32c of payload][payload]``. It is written under a
temporary name, fsynced, renamed into place and the directory fsynced, so a reader sees
either the whole snapshot or none of it. The newest two snapshots are kept.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import google_crc32c

from tokpay.wal._files import fsync_directory, list_numbered, make_directory
from tokpay.wal.errors import WalError, WalFatalIOError

MAX_SNAPSHOT_BYTES: int = 1024 * 1024 * 1024
"""Largest snapshot payload written or read; the whole payload is held in memory."""

SNAPSHOTS_KEPT: int = 2
"""The new snapshot and the one before it, a fallback an operator can reach for by hand."""

_MAGIC = b"TPSNAP01"
_HEADER = struct.Struct("<8sQI")
_MAX_SEQUENCE = 2**64 - 1
_SNAPSHOT_NAME = re.compile(r"^(\d{20})\.snap$")
_TEMP_NAME = re.compile(r"^\d{20}\.snap\.tmp$")
_TEMP_SUFFIX = ".tmp"
_SNAPSHOT_FILE_MODE = 0o644


class SnapshotCorruption(WalError):
    """The newest snapshot file does not check out (bad magic, sequence, size or crc)."""


def _snapshot_name(sequence: int) -> str:
    """The file name of the snapshot taken at ``sequence``."""
    return f"{sequence:020d}.snap"


def write_snapshot(directory: Path, sequence: int, payload: bytes, *, fsync: bool = True) -> Path:
    """Atomically write the snapshot at ``sequence`` and delete all but the newest two.

    Any I/O failure raises ``WalFatalIOError``: after a failed rename or directory fsync the
    caller cannot know whether the snapshot is durable, so it must not truncate the log.
    """
    if not 0 <= sequence <= _MAX_SEQUENCE:
        raise ValueError(f"snapshot sequence must be in 0..{_MAX_SEQUENCE}, got {sequence}")
    if len(payload) > MAX_SNAPSHOT_BYTES:
        raise ValueError(
            f"snapshot of {len(payload)} bytes exceeds MAX_SNAPSHOT_BYTES={MAX_SNAPSHOT_BYTES}"
        )
    directory = Path(directory)
    final = directory / _snapshot_name(sequence)
    temp = directory / (final.name + _TEMP_SUFFIX)
    header = _HEADER.pack(_MAGIC, sequence, google_crc32c.value(payload))
    try:
        make_directory(directory, fsync=fsync)
        existing = list_numbered(directory, _SNAPSHOT_NAME)
        if existing and existing[-1][0] > sequence:
            raise ValueError(
                f"snapshot at {sequence} is older than the existing one at {existing[-1][0]}"
            )
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _SNAPSHOT_FILE_MODE)
        with os.fdopen(fd, "wb") as stream:
            stream.write(header)
            stream.write(payload)
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
        os.replace(temp, final)
        if fsync:
            fsync_directory(directory)
        _delete_older_snapshots(directory, fsync=fsync)
    except OSError as exc:
        raise WalFatalIOError(f"writing snapshot {final} failed: {exc}") from exc
    return final


def read_latest_snapshot(directory: Path) -> tuple[int, bytes] | None:
    """Return ``(sequence, payload)`` of the newest snapshot, or None if there is none.

    Leftover temporary files from an interrupted write are deleted. A newest snapshot that
    fails its checks raises ``SnapshotCorruption`` rather than silently falling back to an
    older one, whose log tail may already be gone.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for entry in directory.iterdir():
        if _TEMP_NAME.match(entry.name):
            # No directory fsync needed: if the deletion is lost, the next read deletes again.
            entry.unlink(missing_ok=True)
    snapshots = list_numbered(directory, _SNAPSHOT_NAME)
    if not snapshots:
        return None
    sequence, path = snapshots[-1]
    return sequence, _read_snapshot(path, sequence)


def _read_snapshot(path: Path, sequence: int) -> bytes:
    size = path.stat().st_size
    if size < _HEADER.size:
        raise SnapshotCorruption(f"{path}: {size} bytes is shorter than the header")
    if size - _HEADER.size > MAX_SNAPSHOT_BYTES:
        raise SnapshotCorruption(f"{path}: {size} bytes is more than MAX_SNAPSHOT_BYTES")
    data = path.read_bytes()
    magic, header_sequence, crc = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise SnapshotCorruption(f"{path}: bad magic {magic!r}")
    if header_sequence != sequence:
        raise SnapshotCorruption(f"{path}: header says sequence {header_sequence}")
    payload = data[_HEADER.size :]
    if google_crc32c.value(payload) != crc:
        raise SnapshotCorruption(f"{path}: crc mismatch")
    return payload


def _delete_older_snapshots(directory: Path, *, fsync: bool) -> None:
    doomed = list_numbered(directory, _SNAPSHOT_NAME)[:-SNAPSHOTS_KEPT]
    for _, path in doomed:
        path.unlink()
    if doomed and fsync:
        fsync_directory(directory)
