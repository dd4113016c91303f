"""Which shard owns an account: a stable hash every process agrees on."""

import zlib

from tokpay.ledger.model import FUNDING_PREFIX


def shard_of(account_id: str, shard_count: int) -> int:
    """Owning shard of ``account_id``; funding accounts name their shard in the id."""
    if account_id.startswith(FUNDING_PREFIX):
        suffix = account_id.rsplit(":", 1)[-1]
        if suffix.isdigit():
            return int(suffix) % shard_count
    # zlib.crc32, not hash(): Python salts str hashes per process.
    return zlib.crc32(account_id.encode()) % shard_count
