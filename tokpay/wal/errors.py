"""What the write-ahead log raises: each failure a caller must tell apart."""

from __future__ import annotations


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
