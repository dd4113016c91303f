"""Each shard replica's on-disk state (accounts, holds, transfers, history, id index)."""
