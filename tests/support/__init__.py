"""What the tests share: order and account builders, in-process shard helpers, ledger audits.

Tests import from here instead of copying helpers into each test module.
"""
