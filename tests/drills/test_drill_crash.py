"""kill -9 the whole server under concurrent transfer load, restart, and audit.

Every acknowledged transfer must be present exactly once after the restart,
balances must equal a replay of the committed transfers, and the sum of all
balances must be zero. Transfers that were in flight when the power went may
or may not have committed; retrying them with the same id must never apply
one twice.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess
from tokpay.testing.audit import AuditFindings, audit_ledger

ACCOUNTS = 24
INITIAL = 1_000_000
CLIENT_THREADS = 8
LOAD_SECONDS_BEFORE_KILL = 4.0


def _audit(http: httpx.Client, accounts: list[str], acked: dict[str, dict[str, Any]]) -> None:
    """The drills' audit (tokpay.testing.audit), and a lookup of some transfers by id."""
    findings = asyncio.run(_findings(http.base_url, accounts, acked))
    assert findings.listed_twice == 0, "an account lists a transfer twice"
    assert findings.lost == [], f"acknowledged transfers lost: {findings.lost[:10]}"
    assert findings.altered == []
    assert findings.balances_off == {}
    assert findings.negative == []
    assert findings.sum_of_balances == 0
    for transfer_id in list(acked)[:: max(1, len(acked) // 50)]:
        assert http.get(f"/v1/transfers/{transfer_id}").status_code == 200


async def _findings(
    url: httpx.URL, accounts: list[str], acked: dict[str, dict[str, Any]]
) -> AuditFindings:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await audit_ledger(http, accounts, acked)


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", shards=4)
    server.start()
    accounts = [f"crash-{n}" for n in range(ACCOUNTS)]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for account in accounts:
                body = {"id": account, "currency": "USD", "owner": f"{account}@example.com"}
                assert http.post("/v1/accounts", json=body).status_code == 201
                topup = {
                    "id": f"top-{account}",
                    "account": account,
                    "amount": INITIAL,
                    "currency": "USD",
                }
                assert http.post("/v1/topups", json=topup).status_code == 201

        sent: dict[str, dict[str, Any]] = {}
        acked: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker: int) -> None:
            rng = random.Random(worker)
            with httpx.Client(base_url=server.url, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    payer, *payees = rng.sample(accounts, rng.randint(2, 4))
                    body = {
                        "id": f"w{worker}-{n}",
                        "from": payer,
                        "to": [{"account": p, "amount": rng.randint(1, 50)} for p in payees],
                        "currency": "USD",
                    }
                    with lock:
                        sent[body["id"]] = body
                    try:
                        response = client.post("/v1/transfers", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone; what was in flight is retried later
                    if response.status_code in (200, 201):
                        with lock:
                            acked[body["id"]] = body

        threads = [threading.Thread(target=load, args=(w,)) for w in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_SECONDS_BEFORE_KILL)
        server.kill_hard()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert len(acked) > 100, "the load should have committed transfers before the kill"
        print(f"acknowledged before the kill: {len(acked)}; in flight: {len(sent) - len(acked)}")

        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            _audit(http, accounts, acked)
            # Retrying what was in flight is safe: same id, same body, never twice.
            for transfer_id, body in sent.items():
                if transfer_id in acked:
                    continue
                response = http.post("/v1/transfers", json=body)
                assert response.status_code in (200, 201), response.text
                acked[transfer_id] = body
            for body in list(acked.values())[:200]:
                assert http.post("/v1/transfers", json=body).status_code == 200
            _audit(http, accounts, acked)
    finally:
        server.stop()
