"""Tests of snapshot files: format, atomic replacement, newest-wins, and corruption checks."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokpay.wal import (
    SnapshotCorruption,
    WalError,
    WalFatalIOError,
    read_latest_snapshot,
    write_snapshot,
)
from tokpay.wal import snapshot as snapshot_module

HEADER = struct.Struct("<8sQI")


def snapshot_name(sequence: int) -> str:
    return f"{sequence:020d}.snap"


def snapshot_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.snap"))


def test_round_trip_and_documented_format(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, 42, b"shard state")
    assert path == tmp_path / snapshot_name(42)
    assert path.read_bytes() == (
        HEADER.pack(b"TPSNAP01", 42, google_crc32c.value(b"shard state")) + b"shard state"
    )
    assert read_latest_snapshot(tmp_path) == (42, b"shard state")


def test_no_snapshot_gives_none(tmp_path: Path) -> None:
    assert read_latest_snapshot(tmp_path / "missing") is None
    assert read_latest_snapshot(tmp_path) is None


def test_write_creates_the_directory(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "a" / "b", 1, b"x")
    assert read_latest_snapshot(tmp_path / "a" / "b") == (1, b"x")


def test_newest_wins_and_only_two_are_kept(tmp_path: Path) -> None:
    for sequence in (3, 10, 7_000, 7_001):
        write_snapshot(tmp_path, sequence, f"state at {sequence}".encode(), fsync=False)
    assert read_latest_snapshot(tmp_path) == (7_001, b"state at 7001")
    assert snapshot_files(tmp_path) == [snapshot_name(7_000), snapshot_name(7_001)]


def test_rewriting_the_same_sequence_replaces_it(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 5, b"old", fsync=False)
    write_snapshot(tmp_path, 5, b"new", fsync=False)
    assert read_latest_snapshot(tmp_path) == (5, b"new")
    assert snapshot_files(tmp_path) == [snapshot_name(5)]


def test_snapshot_older_than_the_newest_is_refused(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 9, b"nine", fsync=False)
    with pytest.raises(ValueError, match="older"):
        write_snapshot(tmp_path, 8, b"eight", fsync=False)
    assert snapshot_files(tmp_path) == [snapshot_name(9)]


def test_empty_payload_and_sequence_zero(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 0, b"")
    assert read_latest_snapshot(tmp_path) == (0, b"")


def test_oversized_snapshot_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "MAX_SNAPSHOT_BYTES", 4)
    write_snapshot(tmp_path, 1, b"1234", fsync=False)
    with pytest.raises(ValueError, match="MAX_SNAPSHOT_BYTES"):
        write_snapshot(tmp_path, 2, b"12345", fsync=False)
    assert read_latest_snapshot(tmp_path) == (1, b"1234")


@pytest.mark.parametrize("flipped_byte", [HEADER.size, -1])
def test_crc_failure_raises(tmp_path: Path, flipped_byte: int) -> None:
    path = write_snapshot(tmp_path, 12, b"balances" * 10)
    data = bytearray(path.read_bytes())
    data[flipped_byte] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruption, match="crc") as caught:
        read_latest_snapshot(tmp_path)
    assert isinstance(caught.value, WalError)
    assert path.name in str(caught.value)


def test_corrupt_newest_snapshot_does_not_fall_back_to_an_older_one(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 1, b"older", fsync=False)
    newest = write_snapshot(tmp_path, 2, b"newer", fsync=False)
    newest.write_bytes(newest.read_bytes()[:-1] + b"!")
    with pytest.raises(SnapshotCorruption):
        read_latest_snapshot(tmp_path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: b"XXSNAP01" + data[8:], "magic"),
        (lambda data: data[:8] + struct.pack("<Q", 13) + data[16:], "sequence 13"),
        (lambda data: data[:10], "shorter than the header"),
    ],
)
def test_damaged_header_raises(
    tmp_path: Path, damage: Callable[[bytes], bytes], problem: str
) -> None:
    path = write_snapshot(tmp_path, 12, b"state")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SnapshotCorruption, match=problem):
        read_latest_snapshot(tmp_path)


def test_leftover_temp_file_is_ignored_and_deleted(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 4, b"complete")
    leftover = tmp_path / (snapshot_name(9) + ".tmp")
    leftover.write_bytes(b"TPSNAP01 half written")
    assert read_latest_snapshot(tmp_path) == (4, b"complete")
    assert not leftover.exists()
    assert snapshot_files(tmp_path) == [snapshot_name(4)]


def test_failed_rename_leaves_the_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(source: object, target: object) -> None:
        raise OSError(errno.EIO, "injected rename failure")

    write_snapshot(tmp_path, 1, b"good", fsync=False)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        with pytest.raises(WalFatalIOError, match="injected rename failure"):
            write_snapshot(tmp_path, 2, b"never lands", fsync=False)
    assert read_latest_snapshot(tmp_path) == (1, b"good")
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_name(1)]


@settings(max_examples=50, deadline=None)
@given(
    snapshots=st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=200)), min_size=1, max_size=5
    )
)
def test_any_series_of_snapshots_reads_back_the_newest(
    snapshots: list[tuple[int, bytes]],
) -> None:
    ordered = sorted(snapshots, key=lambda item: item[0])
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for sequence, payload in ordered:
            write_snapshot(directory, sequence, payload, fsync=False)
        assert read_latest_snapshot(directory) == ordered[-1]
        assert len(snapshot_files(directory)) <= 2
