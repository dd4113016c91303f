"""A short drill against the single-node server: the clients' history is written and
the checker finds it clean; the same history with one read altered is caught, so the
check is not vacuous.

Nothing is killed: a restarted server on the same port from the kernel's ephemeral range
can find it taken by a retrying client's own socket (tokpay.cluster.ports), and two
server starts would double the test's time. Drills with kills run the same checker
(tests/cluster/test_failover.py, ``tokpay drill``); unknown outcomes are unit-tested."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tests.conftest import ServerProcess
from tokpay.testing.audit import read_histories
from tokpay.testing.drill import HistoryOptions, run_drill
from tokpay.testing.history import ReadOp, Resolution, TransferOp, read_history
from tokpay.testing.history_check import check_history

SHARDS = 4


def test_a_drill_keeps_a_clean_history(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", shards=SHARDS)
    server.start()
    try:
        report = asyncio.run(
            run_drill(
                server.url, SHARDS, "none", lambda: "nothing", lambda: None,
                before_seconds=3.0, after_seconds=3.0,
                history=HistoryOptions(tmp_path / "history", keep=True),
            )
        )  # fmt: skip
        assert report.violations == [], report.violations
        check = report.history
        assert check is not None and check.ok
        assert check.acknowledged == report.acknowledged > 100
        assert check.reads > 50 and check.stale_reads == check.nonlinearizable_reads == 0
        assert check.unknown_resolved == check.unknown
        assert report.history_path is not None
        records = list(read_history(Path(report.history_path)))
        resolutions = sum(isinstance(r, Resolution) for r in records)
        assert len(records) == check.operations + resolutions
        assert {type(r) for r in records} >= {TransferOp, ReadOp}
        _altered_read_is_caught(server.url, records)
    finally:
        server.stop()


def _altered_read_is_caught(url: str, records: list[ReadOp | TransferOp | Resolution]) -> None:
    """The kept history with the last successful read turned into a value no balance of
    its account ever had must fail the check."""
    last = max(i for i, r in enumerate(records) if isinstance(r, ReadOp) and r.value)
    read = records[last]
    assert isinstance(read, ReadOp) and read.value is not None
    records[last] = msgspec.structs.replace(read, value=-read.value - 1)
    accounts = {r.account for r in records if isinstance(r, ReadOp)}
    accounts |= {a for r in records if isinstance(r, TransferOp) for a in r.accounts}
    histories = asyncio.run(_histories(url, sorted(accounts)))
    check = check_history(records, histories)
    assert check.nonlinearizable_reads == 1 and check.stale_reads == 0
    assert check.examples[0].rule == "not linearizable"


async def _histories(url: str, accounts: list[str]) -> dict[str, list[Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await read_histories(http, accounts)
