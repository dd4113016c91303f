"""Every bound the ledger enforces, named once.

A limit that is not written down here does not exist: queues, batches, pages and
bodies all take their bound from this module, and hitting one is an error the
caller sees, never a silent wait.
"""

from typing import Final

MAX_AMOUNT: Final = 1_000_000_000_000
"""Largest amount of one leg and of one transfer's total, in minor units (10^12)."""

MAX_BALANCE: Final = 2**62
"""Largest magnitude a balance may reach; keeps every balance inside a signed 64-bit integer."""

MAX_CREDITS: Final = 64
"""Credit legs per transfer (one debit pays 1..MAX_CREDITS accounts)."""

MAX_MEMO_BYTES: Final = 256
"""UTF-8 bytes in a transfer memo."""

MAX_ID_LENGTH: Final = 64
"""Characters in an account or transfer id."""

MAX_OWNER_LENGTH: Final = 254
"""Characters in an account owner (the longest valid e-mail address)."""

MAX_LOOKUP_IDS: Final = 1_000
"""Account ids in one batched balance lookup."""

MAX_CONCURRENT_LOOKUPS: Final = 64
"""Batched lookups one gateway process runs at once before answering 429."""

MAX_LOOKUPS_PER_BATCH: Final = MAX_CONCURRENT_LOOKUPS
"""Lookups spanning shards in one call to the coordinator (so at most
``MAX_LOOKUPS_PER_BATCH * MAX_LOOKUP_IDS`` ids)."""

MAX_INFLIGHT_LOOKUP_BATCHES: Final = 2
"""Batches of spanning lookups one gateway process keeps in flight to the coordinator, each
on its own connection: a batch waiting at the read barrier does not hold up the next."""

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
"""History page sizes."""

MAX_BATCH: Final = 1_024
"""Items in one call to a shard or to the coordinator."""

MAX_PENDING_PER_SHARD: Final = 20_000
"""Requests one gateway process queues for one shard before answering 429."""

MAX_INFLIGHT_BATCHES: Final = 1
"""Batches one gateway process keeps in flight to one shard."""

MAX_INFLIGHT_CROSS_BATCHES: Final = 4
"""Cross-shard batches one gateway process keeps in flight to the coordinator, each on its
own connection: a batch waiting for a stalled shard (up to two prepare deadlines) does not
hold up the next ones."""

MAX_BODY_BYTES: Final = 64 * 1024
"""Bytes in one HTTP request body."""

MAX_ACCOUNTS_PER_SHARD: Final = 2_000_000
"""Accounts one shard holds in memory (about 250 bytes each); more is ``shard_full``."""

MAX_PREPARED_PER_SHARD: Final = 50_000
"""Cross-shard holds one shard keeps at once; a prepare past it votes no (``overloaded``)."""

REFUSAL_MEMORY_SECONDS: Final = 24 * 3600
"""How long a refused transfer's id answers the same refusal to a retry with the same body.
After it, the same body is judged again; another body under that id is a conflict forever."""
