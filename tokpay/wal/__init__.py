"""The write-ahead log: checksummed segment files of (epoch, sequence, bytes) records, and
atomic snapshots that let old segments be deleted. Knows files and bytes, nothing of accounts.
"""

from tokpay.wal.errors import (
    RecordTooLarge,
    SequenceGap,
    StaleEpoch,
    WalCorruption,
    WalError,
    WalFatalIOError,
)
from tokpay.wal.frames import DEFAULT_SEGMENT_BYTES, MAX_RECORD_BYTES, LogRecord
from tokpay.wal.log import WriteAheadLog
from tokpay.wal.snapshot import (
    MAX_SNAPSHOT_BYTES,
    SnapshotCorruption,
    read_latest_snapshot,
    write_snapshot,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "LogRecord",
    "RecordTooLarge",
    "SequenceGap",
    "SnapshotCorruption",
    "StaleEpoch",
    "WalCorruption",
    "WalError",
    "WalFatalIOError",
    "WriteAheadLog",
    "read_latest_snapshot",
    "write_snapshot",
]
