"""The audit after a run that killed something: the ledger's own answers (over HTTP)
against what the clients were told.

One audit for the drills (``tokpay drill``, tests/cluster) and the crash test
(tests/drills): every acknowledged transfer is held, once, as it was sent; every
balance equals a replay of the transfers the ledger holds, and none is negative; the
sum of all balances is zero. What the clients read is judged by the history checker
(tokpay.testing.history_check), which reuses the first rule and the histories read here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_SECONDS = 60.0
"""How long an audit read is retried while the ledger answers 5xx (a failover settling)."""
HISTORY_PAGE = 200

Histories = Mapping[str, Sequence[Mapping[str, Any]]]
"""Per account, its history entries oldest first, as ``GET /v1/accounts/{id}/transfers``
gives them (id, from, to, effect, balance_after, ...)."""


@dataclass
class AuditFindings:
    """What the audit found; a clean ledger has every list empty and a zero sum."""

    lost: list[str]
    """Acknowledged transfers the ledger does not hold."""
    listed_twice: int
    """Entries beyond the first of a transfer in one account's history."""
    altered: list[str]
    """Acknowledged transfers held with another payer or other legs than were sent."""
    balances_off: dict[str, tuple[int | None, int]]
    """Accounts whose balance differs from a replay: (balance, replay)."""
    negative: list[str]
    """Accounts with a negative balance."""
    sum_of_balances: int
    """Over every currency of the ledger."""


async def audit_ledger(
    http: httpx.AsyncClient,
    accounts: list[str],
    acknowledged: Mapping[str, Mapping[str, Any]],
    histories: Histories | None = None,
) -> AuditFindings:
    """Audit ``accounts`` (every account the run touched) against ``acknowledged``
    (transfer id -> the body the ledger acknowledged). ``histories``: the accounts'
    histories if already read (``read_histories``), else they are read here."""
    if histories is None:
        histories = await read_histories(http, accounts)
    lost, listed_twice, altered = held_transfers(histories, acknowledged)
    committed = {item["id"]: item for items in histories.values() for item in items}
    replayed = dict.fromkeys(accounts, 0)
    for item in committed.values():
        if item["kind"] == "payment":
            replayed[item["from"]] -= item["amount"]
        for leg in item["to"]:
            replayed[leg["account"]] += leg["amount"]
    lookup = await _read(http, "/v1/balances/lookup", body={"account_ids": accounts})
    actual: dict[str, int] = {row["account_id"]: row["balance"] for row in lookup["balances"]}
    summary = await _read(http, "/v1/ledger/summary")
    return AuditFindings(
        lost=lost,
        listed_twice=listed_twice,
        altered=altered,
        balances_off={
            a: (actual.get(a), replayed[a]) for a in accounts if actual.get(a) != replayed[a]
        },
        negative=[a for a, value in actual.items() if value < 0],
        sum_of_balances=sum(c["sum_of_balances"] for c in summary["currencies"].values()),
    )


def held_transfers(
    histories: Histories, acknowledged: Mapping[str, Mapping[str, Any]]
) -> tuple[list[str], int, list[str]]:
    """Whether the ledger holds each acknowledged transfer, once, as sent: the ids lost,
    the entries beyond the first of a transfer in one account's history, the ids altered.
    Also the history checker's first rule (tokpay.testing.history_check)."""
    committed: dict[str, Mapping[str, Any]] = {}
    listed_twice = 0
    for items in histories.values():
        ids = [item["id"] for item in items]
        listed_twice += len(ids) - len(set(ids))
        committed.update((item["id"], item) for item in items)
    lost = [i for i in acknowledged if i not in committed]
    altered = [
        i
        for i, body in acknowledged.items()
        if i in committed
        and (committed[i]["from"], committed[i]["to"]) != (body["from"], body["to"])
    ]
    return lost, listed_twice, altered


async def read_histories(http: httpx.AsyncClient, accounts: list[str]) -> dict[str, list[Any]]:
    """Every entry of each account's history (all pages), oldest first."""
    histories: dict[str, list[Any]] = {}
    for account in accounts:
        items: list[Any] = []
        cursor = None
        while True:
            params = {"limit": HISTORY_PAGE} | ({"cursor": cursor} if cursor else {})
            page = await _read(http, f"/v1/accounts/{account}/transfers", params=params)
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        # The API lists newest first; the checker walks an account's order from its start.
        histories[account] = items[::-1]
    return histories


async def _read(
    http: httpx.AsyncClient,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """An audit read (a GET, or a POST that only reads), retried while the ledger answers
    5xx or the connection fails (a failover still settling)."""
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            if body is None:
                response = await http.get(path, params=params)
            else:
                response = await http.post(path, json=body)
            if response.status_code < 500:
                response.raise_for_status()
                return response.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} still failing after {RETRY_SECONDS} s")
        await asyncio.sleep(0.5)
