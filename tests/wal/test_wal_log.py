"""Tests of the write-ahead log: format, recovery of a torn tail, corruption, fencing, truncation.

The helpers below re-implement the documented on-disk format independently of the code under
test, so the tests pin the format rather than merely round-tripping through it.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokpay.wal
from tokpay.wal import DEFAULT_SEGMENT_BYTES, MAX_RECORD_BYTES, LogRecord, WriteAheadLog

HEADER_BYTES = 8
SMALL_SEGMENT_BYTES = 120


@dataclass(frozen=True)
class Frame:
    offset: int
    size: int
    record: LogRecord


def encode_frame(epoch: int, sequence: int, body: bytes) -> bytes:
    payload = msgspec.msgpack.encode([epoch, sequence, body])
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", google_crc32c.value(length + payload)) + payload


def read_frames(path: Path) -> list[Frame]:
    """Parse a segment file that is expected to be clean."""
    data = path.read_bytes()
    frames: list[Frame] = []
    offset = 0
    while offset < len(data):
        length, crc = struct.unpack_from("<II", data, offset)
        payload = data[offset + HEADER_BYTES : offset + HEADER_BYTES + length]
        assert google_crc32c.value(data[offset : offset + 4] + payload) == crc
        epoch, sequence, body = msgspec.msgpack.decode(payload)
        frames.append(Frame(offset, HEADER_BYTES + length, LogRecord(epoch, sequence, body)))
        offset += HEADER_BYTES + length
    return frames


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}.wal"


def write_log(
    directory: Path,
    bodies: list[bytes],
    *,
    epoch: int = 1,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
) -> list[LogRecord]:
    with WriteAheadLog.open(directory, segment_bytes=segment_bytes, fsync=False) as wal:
        for body in bodies:
            wal.append(epoch, body)
    return [LogRecord(epoch, sequence, body) for sequence, body in enumerate(bodies, start=1)]


def reopen_records(directory: Path, **kwargs: int) -> list[LogRecord]:
    with WriteAheadLog.open(directory, fsync=False, **kwargs) as wal:
        return list(wal.records())


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def body_of(index: int) -> bytes:
    return f"body-{index:04d}".encode()


# ---------------------------------------------------------------------------- basics


def test_new_log_in_a_missing_directory_is_empty(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "wal"
    with WriteAheadLog.open(directory) as wal:
        assert wal.last_sequence == 0
        assert wal.last_epoch == 0
        assert list(wal.records()) == []
    assert [p.name for p in segment_files(directory)] == [segment_name(1)]


def test_append_then_reopen_returns_the_same_records(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.append(3, b"first") == 1
        assert wal.append(3, b"second") == 2
        assert wal.append(4, b"third", sequence=3) == 3
        written = list(wal.records())
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.last_sequence == 3
        assert wal.last_epoch == 4
        assert list(wal.records()) == written
    assert written == [
        LogRecord(3, 1, b"first"),
        LogRecord(3, 2, b"second"),
        LogRecord(4, 3, b"third"),
    ]


def test_bytes_on_disk_follow_the_documented_frame(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        wal.append(7, b"hello")
        wal.append(2**40, b"")
    expected = encode_frame(7, 1, b"hello") + encode_frame(2**40, 2, b"")
    assert (tmp_path / segment_name(1)).read_bytes() == expected


def test_records_after_a_sequence(tmp_path: Path) -> None:
    records = write_log(tmp_path, [body_of(i) for i in range(20)], segment_bytes=100)
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert list(wal.records(after_sequence=13)) == records[13:]
        assert list(wal.records(after_sequence=20)) == []


def test_empty_payloads_round_trip(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"", b"", b"x", b""], segment_bytes=30)
    assert reopen_records(tmp_path) == records
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.append(1, b"") == 5


def test_files_that_are_not_segments_are_ignored(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b"])
    (tmp_path / "00000000000000000001.snap").write_bytes(b"not a segment")
    (tmp_path / "notes.txt").write_bytes(b"\x00" * 50)
    assert reopen_records(tmp_path) == records


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path, fsync=False)
    wal.append(1, b"a")
    wal.close()
    wal.close()
    with pytest.raises(tokpay.wal.WalError, match="closed"):
        wal.append(1, b"b")
    assert reopen_records(tmp_path) == [LogRecord(1, 1, b"a")]


# ---------------------------------------------------------------------- segments


def test_sequences_stay_contiguous_across_segment_rolls(tmp_path: Path) -> None:
    bodies = [body_of(i) * (i % 4) for i in range(60)]
    records = write_log(tmp_path, bodies, segment_bytes=SMALL_SEGMENT_BYTES)
    files = segment_files(tmp_path)
    assert len(files) > 5
    next_sequence = 1
    for path in files:
        frames = read_frames(path)
        assert frames, f"{path.name} is empty"
        assert path.name == segment_name(frames[0].record.sequence)
        # A segment only grows past the limit when a single record is bigger than it.
        assert path.stat().st_size <= SMALL_SEGMENT_BYTES or len(frames) == 1
        for frame in frames:
            assert frame.record.sequence == next_sequence
            next_sequence += 1
    assert reopen_records(tmp_path) == records
    with WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES, fsync=False) as wal:
        assert wal.append(1, b"more") == len(bodies) + 1


def test_a_record_bigger_than_a_segment_gets_its_own_segment(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"x" * 500, b"b"], segment_bytes=100)
    assert [len(read_frames(path)) for path in segment_files(tmp_path)] == [1, 1, 1]
    assert reopen_records(tmp_path) == records


def test_empty_newest_segment_sets_the_sequence_floor(tmp_path: Path) -> None:
    (tmp_path / segment_name(42)).touch()
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.last_sequence == 41
        assert wal.append(5, b"x") == 42
    assert [f.record for f in read_frames(tmp_path / segment_name(42))] == [LogRecord(5, 42, b"x")]


def test_empty_segment_left_by_a_crash_during_a_roll_is_reused(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b", b"c"], epoch=9)
    (tmp_path / segment_name(4)).touch()
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert (wal.last_sequence, wal.last_epoch) == (3, 9)
        assert list(wal.records()) == records
        assert wal.append(9, b"d") == 4
    assert [f.record.sequence for f in read_frames(tmp_path / segment_name(4))] == [4]


def test_empty_segment_that_is_not_the_newest_is_corruption(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).touch()
    (tmp_path / segment_name(2)).write_bytes(encode_frame(1, 2, b"x"))
    with pytest.raises(tokpay.wal.WalCorruption, match=segment_name(1)):
        WriteAheadLog.open(tmp_path, fsync=False)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({1: [(1, 1), (1, 3)]}, "sequence 3, expected 2"),
        ({5: [(1, 4)]}, "sequence 4, expected 5"),
        ({1: [(2, 1), (1, 2)]}, "epoch 1 goes back from 2"),
        ({1: [(2, 1)], 2: [(1, 2)]}, "epoch 1 goes back from 2"),
        ({1: [(1, 1)], 3: [(1, 3)]}, "segment starts at 3, expected 2"),
        ({1: [(1, 1), (1, 2)], 2: [(1, 2)]}, "segment starts at 2, expected 3"),
    ],
)
def test_records_out_of_order_on_disk_are_corruption(
    tmp_path: Path, files: dict[int, list[tuple[int, int]]], problem: str
) -> None:
    # Every frame here has a valid crc, so none of them can pass for a torn tail.
    for first_sequence, epochs_and_sequences in files.items():
        data = b"".join(encode_frame(e, s, b"body") for e, s in epochs_and_sequences)
        (tmp_path / segment_name(first_sequence)).write_bytes(data)
    with pytest.raises(tokpay.wal.WalCorruption, match=problem):
        WriteAheadLog.open(tmp_path, fsync=False)


# ---------------------------------------------------------------- torn tail


def cut_points_of_last_record(directory: Path) -> Iterator[tuple[Path, int]]:
    last_segment = segment_files(directory)[-1]
    last = read_frames(last_segment)[-1]
    for cut in range(last.offset, last.offset + last.size):
        yield last_segment, cut


@pytest.mark.parametrize("segment_bytes", [DEFAULT_SEGMENT_BYTES, SMALL_SEGMENT_BYTES])
def test_torn_tail_at_every_offset_keeps_the_earlier_records(
    tmp_path: Path, segment_bytes: int
) -> None:
    original = tmp_path / "original"
    records = write_log(original, [body_of(i) for i in range(12)], segment_bytes=segment_bytes)
    for number, (segment, cut) in enumerate(cut_points_of_last_record(original)):
        copy = tmp_path / f"cut-{number}"
        shutil.copytree(original, copy)
        os.truncate(copy / segment.name, cut)
        with WriteAheadLog.open(copy, segment_bytes=segment_bytes, fsync=False) as wal:
            assert list(wal.records()) == records[:-1], f"cut at {cut}"
            assert wal.last_sequence == len(records) - 1
            assert wal.append(1, b"after the tear") == len(records)
        assert (copy / segment.name).stat().st_size > cut
        assert reopen_records(copy) == [
            *records[:-1],
            LogRecord(1, len(records), b"after the tear"),
        ]


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b", b"c"])
    segment = tmp_path / segment_name(1)
    clean_size = segment.stat().st_size
    with segment.open("ab") as stream:
        stream.write(b"\x00" * 4096)
    assert reopen_records(tmp_path) == records
    assert segment.stat().st_size == clean_size


def test_last_record_replaced_by_zeros_is_a_torn_tail(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b", b"c"])
    segment = tmp_path / segment_name(1)
    last = read_frames(segment)[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[: last.offset] + b"\x00" * last.size)
    assert reopen_records(tmp_path) == records[:-1]
    assert segment.stat().st_size == last.offset


def test_torn_first_record_of_a_fresh_segment_leaves_an_empty_segment(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a" * 50, b"b" * 50], segment_bytes=60)
    newest = tmp_path / segment_name(2)
    os.truncate(newest, 10)
    with WriteAheadLog.open(tmp_path, segment_bytes=60, fsync=False) as wal:
        assert list(wal.records()) == records[:1]
        assert (wal.last_sequence, wal.last_epoch) == (1, 1)
        assert newest.stat().st_size == 0
        assert wal.append(1, b"again") == 2
    assert [f.record.payload for f in read_frames(newest)] == [b"again"]


def test_garbage_longer_than_any_record_at_the_tail_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, [b"a", b"b"])
    segment = tmp_path / segment_name(1)
    good_size = segment.stat().st_size
    with segment.open("ab") as stream:
        stream.truncate(good_size + MAX_RECORD_BYTES + 1024)
    with pytest.raises(tokpay.wal.WalCorruption, match=f"offset {good_size}"):
        WriteAheadLog.open(tmp_path, fsync=False)


# ---------------------------------------------------------------- corruption


# (byte within the frame, bit): length field low and high bits, crc, payload.
FRAME_BIT_FLIPS = [(0, 0), (0, 5), (1, 0), (3, 7), (5, 2), (HEADER_BYTES, 0), (-1, 3)]


@pytest.mark.parametrize(("byte", "bit"), FRAME_BIT_FLIPS)
def test_bit_flip_in_a_middle_record_is_corruption(tmp_path: Path, byte: int, bit: int) -> None:
    write_log(tmp_path, [body_of(i) for i in range(5)])
    segment = tmp_path / segment_name(1)
    middle = read_frames(segment)[2]
    size = segment.stat().st_size
    flip_bit(segment, middle.offset + (byte % middle.size), bit)
    with pytest.raises(tokpay.wal.WalCorruption) as caught:
        WriteAheadLog.open(tmp_path, fsync=False)
    assert segment.name in str(caught.value)
    assert f"offset {middle.offset}" in str(caught.value)
    # Nothing was cut off: corruption is reported, never repaired.
    assert segment.stat().st_size == size


@pytest.mark.parametrize(("byte", "bit"), FRAME_BIT_FLIPS)
def test_bit_flip_in_the_last_record_of_an_older_segment_is_corruption(
    tmp_path: Path, byte: int, bit: int
) -> None:
    write_log(tmp_path, [body_of(i) for i in range(10)], segment_bytes=SMALL_SEGMENT_BYTES)
    older = segment_files(tmp_path)[0]
    last = read_frames(older)[-1]
    flip_bit(older, last.offset + (byte % last.size), bit)
    with pytest.raises(tokpay.wal.WalCorruption, match=f"{older.name} at offset {last.offset}"):
        WriteAheadLog.open(tmp_path, fsync=False)


def test_truncated_older_segment_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, [body_of(i) for i in range(10)], segment_bytes=SMALL_SEGMENT_BYTES)
    older = segment_files(tmp_path)[0]
    os.truncate(older, older.stat().st_size - 1)
    with pytest.raises(tokpay.wal.WalCorruption, match=older.name):
        WriteAheadLog.open(tmp_path, fsync=False)


# -------------------------------------------------------------------- limits


def test_record_of_exactly_the_maximum_size_works_and_one_byte_more_does_not(
    tmp_path: Path,
) -> None:
    biggest = b"\x00" * MAX_RECORD_BYTES
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.append(1, biggest) == 1
        size = (tmp_path / segment_name(1)).stat().st_size
        with pytest.raises(tokpay.wal.RecordTooLarge) as caught:
            wal.append(1, biggest + b"\x00")
        assert isinstance(caught.value, ValueError)
        assert wal.last_sequence == 1
    assert (tmp_path / segment_name(1)).stat().st_size == size
    assert reopen_records(tmp_path) == [LogRecord(1, 1, biggest)]


def test_maximum_size_record_with_a_bad_crc_at_the_tail_is_a_torn_tail(tmp_path: Path) -> None:
    write_log(tmp_path, [b"small", b"\x00" * MAX_RECORD_BYTES])
    segment = tmp_path / segment_name(1)
    flip_bit(segment, segment.stat().st_size - 1)
    assert reopen_records(tmp_path) == [LogRecord(1, 1, b"small")]


# ------------------------------------------------------------- fencing and order


def test_stale_epoch_is_refused(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        wal.append(2, b"a")
        with pytest.raises(tokpay.wal.StaleEpoch):
            wal.append(1, b"b")
        assert wal.append(2, b"c") == 2
        assert wal.append(3, b"d") == 3
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.last_epoch == 3
        with pytest.raises(tokpay.wal.StaleEpoch):
            wal.append(2, b"e")
        assert [r.payload for r in wal.records()] == [b"a", b"c", b"d"]


def test_explicit_sequence_must_follow_the_last_one(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.append(1, b"a", sequence=1) == 1
        for wrong in (1, 3, 100):
            with pytest.raises(tokpay.wal.SequenceGap) as caught:
                wal.append(1, b"b", sequence=wrong)
            assert isinstance(caught.value, ValueError)
        assert wal.append(1, b"b", sequence=2) == 2
        assert wal.last_sequence == 2


def test_negative_epoch_is_refused(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, fsync=False) as wal, pytest.raises(ValueError):
        wal.append(-1, b"a")


# ------------------------------------------------------------------ truncation


def test_truncate_before_deletes_only_fully_covered_segments(tmp_path: Path) -> None:
    records = write_log(
        tmp_path, [body_of(i) for i in range(40)], segment_bytes=SMALL_SEGMENT_BYTES
    )
    before = {path.name: read_frames(path) for path in segment_files(tmp_path)}
    cut = 17
    with WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES, fsync=False) as wal:
        deleted = wal.truncate_before(cut)
        assert list(wal.records(after_sequence=cut - 1)) == records[cut - 1 :]
    remaining = {path.name for path in segment_files(tmp_path)}
    gone = set(before) - remaining
    assert deleted == len(gone) > 0
    for name in gone:
        assert all(frame.record.sequence < cut for frame in before[name])
    first_kept = read_frames(segment_files(tmp_path)[0])
    assert first_kept[0].record.sequence <= cut <= first_kept[-1].record.sequence

    with WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES, fsync=False) as wal:
        assert (wal.last_sequence, wal.last_epoch) == (40, 1)
        assert list(wal.records()) == records[first_kept[0].record.sequence - 1 :]
        assert wal.append(1, b"next") == 41
        assert wal.truncate_before(cut) == 0


def test_truncate_before_everything_still_remembers_sequence_and_epoch(tmp_path: Path) -> None:
    write_log(tmp_path, [body_of(i) for i in range(30)], segment_bytes=SMALL_SEGMENT_BYTES)
    with WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES, fsync=False) as wal:
        wal.append(6, b"last")
        newest = segment_files(tmp_path)[-1]
        assert wal.truncate_before(wal.last_sequence + 1) > 0
    assert segment_files(tmp_path) == [newest]
    with WriteAheadLog.open(tmp_path, segment_bytes=SMALL_SEGMENT_BYTES) as wal:
        assert (wal.last_sequence, wal.last_epoch) == (31, 6)
        with pytest.raises(tokpay.wal.StaleEpoch):
            wal.append(5, b"fenced out")
        assert wal.append(6, b"after") == 32


def test_truncate_before_keeps_the_newest_record_behind_an_empty_segment(tmp_path: Path) -> None:
    write_log(tmp_path, [b"a", b"b"], epoch=4)
    (tmp_path / segment_name(3)).touch()
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert wal.truncate_before(3) == 0
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert (wal.last_sequence, wal.last_epoch) == (2, 4)


def test_truncate_before_past_the_end_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [b"a", b"b"])
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        with pytest.raises(tokpay.wal.SequenceGap):
            wal.truncate_before(4)
        with pytest.raises(ValueError):
            wal.truncate_before(0)
        assert wal.truncate_before(1) == 0


# --------------------------------------------------------------- I/O failures


def append_fails_and_poisons(
    wal: WriteAheadLog,
    monkeypatch: pytest.MonkeyPatch,
    os_call: str,
    failing: Callable[..., int | None],
    match: str,
) -> None:
    """An append fails for good while ``os.<os_call>`` misbehaves; once the real call is back,
    the next append is refused all the same: a failed write or fsync is never retried.
    """
    with monkeypatch.context() as patch:
        patch.setattr(os, os_call, failing)
        with pytest.raises(tokpay.wal.WalFatalIOError, match=match):
            wal.append(1, b"maybe lost")
    with pytest.raises(tokpay.wal.WalFatalIOError):
        wal.append(1, b"refused")


def test_failed_fdatasync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "injected fsync failure")

    with WriteAheadLog.open(tmp_path, fsync=True) as wal:
        wal.append(1, b"durable")
        append_fails_and_poisons(
            wal, monkeypatch, "fdatasync", failing_fdatasync, "injected fsync failure"
        )
        with pytest.raises(tokpay.wal.WalFatalIOError):
            wal.truncate_before(1)
        assert wal.last_sequence == 1
        assert list(wal.records()) == [LogRecord(1, 1, b"durable")]


def test_failed_write_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "injected full disk")

    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        append_fails_and_poisons(wal, monkeypatch, "write", failing_write, "injected full disk")
    assert reopen_records(tmp_path) == []


def test_short_write_poisons_the_log_and_reopen_cuts_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        wal.append(1, b"whole")
        append_fails_and_poisons(wal, monkeypatch, "write", half_write, "short write")
    with WriteAheadLog.open(tmp_path, fsync=False) as wal:
        assert list(wal.records()) == [LogRecord(1, 1, b"whole")]
        assert wal.append(1, b"again") == 2


# ----------------------------------------------------------------- properties


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], int]:
    bodies = draw(st.lists(st.binary(max_size=80), max_size=30))
    bumps = draw(st.lists(st.integers(0, 2), min_size=len(bodies), max_size=len(bodies)))
    epochs = [sum(bumps[: i + 1]) for i in range(len(bodies))]
    segment_bytes = draw(st.sampled_from([1, 64, 200, DEFAULT_SEGMENT_BYTES]))
    return list(zip(epochs, bodies, strict=True)), segment_bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs(), data=st.data())
def test_any_log_round_trips_through_a_torn_tail(
    log: tuple[list[tuple[int, bytes]], int], data: st.DataObject
) -> None:
    entries, segment_bytes = log
    records = [LogRecord(e, s, b) for s, (e, b) in enumerate(entries, start=1)]
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        with WriteAheadLog.open(directory, segment_bytes=segment_bytes, fsync=False) as wal:
            for record in records:
                assert wal.append(record.epoch, record.payload) == record.sequence
        newest = segment_files(directory)[-1]
        newest_first = int(newest.name.removesuffix(".wal"))
        cut = data.draw(st.integers(0, newest.stat().st_size), label="cut")
        os.truncate(newest, cut)
        survivors = [r for r in records if r.sequence < newest_first] + [
            f.record for f in frames_before(records, newest_first, cut)
        ]

        with WriteAheadLog.open(directory, segment_bytes=segment_bytes, fsync=False) as wal:
            assert list(wal.records()) == survivors
            assert wal.last_sequence == (survivors[-1].sequence if survivors else 0)
            assert wal.last_epoch == (survivors[-1].epoch if survivors else 0)
            next_sequence = wal.append(wal.last_epoch, b"next")
        assert next_sequence == wal.last_sequence == len(survivors) + 1
        assert reopen_records(directory, segment_bytes=segment_bytes) == [
            *survivors,
            LogRecord(wal.last_epoch, next_sequence, b"next"),
        ]


def frames_before(records: list[LogRecord], first_sequence: int, cut: int) -> list[Frame]:
    """Frames of the newest segment (records from ``first_sequence`` on) that end by ``cut``."""
    frames: list[Frame] = []
    offset = 0
    for record in records[first_sequence - 1 :]:
        size = len(encode_frame(record.epoch, record.sequence, record.payload))
        if offset + size > cut:
            break
        frames.append(Frame(offset, size, record))
        offset += size
    return frames


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=10),
    garbage=st.binary(min_size=1, max_size=300),
)
def test_random_garbage_after_the_last_record_is_cut(bodies: list[bytes], garbage: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        records = write_log(directory, bodies)
        with (directory / segment_name(1)).open("ab") as stream:
            stream.write(garbage)
        assert reopen_records(directory) == records
