"""The drill's load: writers and readers against one gateway, with the bookkeeping the
audit and the outage maths need.

Fresh accounts per drill (payers funded once, sinks that only receive). Transfers
whose answer was lost are retried with the same id until they settle: the ledger's
idempotency makes that safe, and it is what real clients do; those still unanswered
after that are looked up by id. A read of a sink that shows less than a read completed
before it started went backwards. Every attempt, read and look-up goes to the drill's
history (tokpay.testing.history) as it happens.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from typing import Any

import httpx

from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import home_of
from tokpay.testing.history import (
    HistoryFull,
    HistoryWriter,
    Leg,
    Outcome,
    ReadOp,
    Record,
    Resolution,
    Stamp,
    TransferOp,
    now,
)
from tokpay.testing.outage import Acknowledgement

PAYERS = 24
SINKS = 12
INITIAL = 10**9
WRITERS = 12
READERS = 4
REQUEST_TIMEOUT_SECONDS = 20.0
SETTLE_SECONDS = 60.0
"""After the load stops: how long unanswered transfers are retried before counting as unknown."""


class DrillLoad:
    """Writers and readers against one gateway, with the bookkeeping the audit needs."""

    def __init__(
        self, base_url: str, shard_count: int, headers: dict[str, str], history: HistoryWriter
    ) -> None:
        self.base_url = base_url
        self.shard_count = shard_count
        self.headers = headers
        run = secrets.token_hex(3)
        self.payers = _spread(f"drill-{run}-p", PAYERS, shard_count)
        self.sinks = _spread(f"drill-{run}-s", SINKS, shard_count)
        self.sent: dict[str, dict[str, Any]] = {}
        self.acked: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.reads: list[float] = []
        """Completion times of successful reads."""
        self.writes: list[float] = []
        """Completion times of acknowledged writes."""
        self.acks: list[Acknowledgement] = []
        self.backwards = 0
        self.errors: dict[str, int] = {}
        # The highest balance a completed read saw, per sink: a later read may not be lower.
        self._floor: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self._stop = asyncio.Event()
        self.history = history
        self.history_full: HistoryFull | None = None
        """Set when the history reached its cap: the load stops and the drill fails."""

    @property
    def accounts(self) -> list[str]:
        return self.payers + self.sinks

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=WRITERS + READERS + 4),
        )

    async def open_accounts(self) -> None:
        async with self.client() as http:
            for account in self.accounts:
                body = {"id": account, "currency": "USD", "owner": f"{account}@drill.example"}
                await self._until_done(http, "/v1/accounts", body, {201, 200, 409})
            for account in self.payers:
                topup = {"id": f"top-{account}", "account": account, "amount": INITIAL}
                await self._until_done(http, "/v1/topups", topup | {"currency": "USD"}, {200, 201})

    async def _until_done(
        self, http: httpx.AsyncClient, path: str, body: dict[str, Any], done: set[int]
    ) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                response = await http.post(path, json=body)
                if response.status_code in done:
                    return
                if response.status_code < 500 and response.status_code != 429:
                    raise RuntimeError(f"{path} refused: {response.status_code} {response.text}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not succeed within {SETTLE_SECONDS} s")
            await asyncio.sleep(0.2)

    def _route(self, body: dict[str, Any]) -> str:
        shards = {shard_of(body["from"], self.shard_count)} | {
            shard_of(leg["account"], self.shard_count) for leg in body["to"]
        }
        return f"shard-{shards.pop()}" if len(shards) == 1 else "2pc"

    def _record(self, record: Record) -> None:
        if self.history_full is not None:
            return  # the drill already failed on it; what follows is not judged
        try:
            self.history.append(record)
        except HistoryFull as full:
            self.history_full = full
            self.stop()

    def _record_transfer(
        self, client: str, body: dict[str, Any], invoked: Stamp, outcome: Outcome, code: str = ""
    ) -> None:
        legs = tuple(Leg(leg["account"], leg["amount"]) for leg in body["to"])
        self._record(
            TransferOp(client, invoked, now(), body["id"], body["from"], legs, outcome, code)
        )

    async def _submit(self, http: httpx.AsyncClient, body: dict[str, Any], client: str) -> bool:
        """One attempt; True once the ledger gave a definitive answer."""
        invoked = now()
        try:
            response = await http.post("/v1/transfers", json=body)
        except httpx.HTTPError as error:
            self._record_transfer(client, body, invoked, "unknown", type(error).__name__)
            self._count(type(error).__name__)
            return False
        status = str(response.status_code)
        if response.status_code in (200, 201):
            self._record_transfer(client, body, invoked, "ok")
            self.acked[body["id"]] = body
            return True
        if response.status_code >= 500 or response.status_code == 429:
            self._record_transfer(client, body, invoked, "unknown", status)
            self._count(status)
            return False
        # A refusal (4xx) is final; 409 for our own retry would be a violation.
        self._record_transfer(client, body, invoked, "refused", f"{status} {_problem(response)}")
        self.refused[status] = self.refused.get(status, 0) + 1
        return True

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def writer(self, worker: int) -> None:
        """Transfers of one route, one at a time, each retried until it settles.

        The first ``2 * shard_count`` writers (at most half; all of them on one shard) each keep to one shard: their
        payers, payees and ids (homed there, ``home_of``) are all on it, so that route
        depends on that shard alone and a stall elsewhere cannot hold its writers. The
        others pay across shards (2PC).
        """
        rng = random.Random(worker)
        single = WRITERS if self.shard_count == 1 else min(WRITERS // 2, 2 * self.shard_count)
        shard = worker % self.shard_count if worker < single else None
        payers, targets = self.payers, self.accounts
        if shard is not None:
            payers = [a for a in payers if shard_of(a, self.shard_count) == shard]
            targets = [a for a in targets if shard_of(a, self.shard_count) == shard]
        async with self.client() as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                payer = rng.choice(payers)
                others = [a for a in targets if a != payer]
                if shard is None:
                    payees = rng.sample(others, rng.randint(1, 3))
                    if all(shard_of(p, self.shard_count) == shard_of(payer, self.shard_count)
                           for p in payees):  # fmt: skip
                        continue
                else:
                    payees = rng.sample(others, min(len(others), rng.randint(1, 3)))
                transfer_id = _homed(f"{payer}-w{worker}-{n}", shard, self.shard_count)
                body: dict[str, Any] = {
                    "id": transfer_id,
                    "from": payer,
                    "to": [{"account": p, "amount": rng.randint(1, 100)} for p in payees],
                    "currency": "USD",
                }
                self.sent[transfer_id] = body
                submitted = time.monotonic()
                # The same id until a definitive answer: what a real client does.
                while not await self._submit(http, body, f"w{worker}"):
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(0.05)
                if transfer_id in self.acked:
                    now = time.monotonic()
                    self.writes.append(now)
                    self.acks.append((self._route(body), submitted, now))

    async def reader(self, worker: int) -> None:
        rng = random.Random(1000 + worker)
        client = f"r{worker}"
        async with self.client() as http:
            while not self._stop.is_set():
                # Payers too: their balances go down and up, so the history checker
                # sees reads that several prefixes of their history explain.
                account = rng.choice(self.accounts)
                floor = self._floor.get(account)
                invoked = now()
                try:
                    response = await http.get(f"/v1/accounts/{account}/balance")
                except httpx.HTTPError as error:
                    self._record(
                        ReadOp(client, invoked, now(), account, None, type(error).__name__)
                    )
                    self._count(type(error).__name__)
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code != 200:
                    code = str(response.status_code)
                    self._record(ReadOp(client, invoked, now(), account, None, code))
                    self._count(f"read {code}")
                    await asyncio.sleep(0.05)
                    continue
                value = int(response.json()["balance"])
                self._record(ReadOp(client, invoked, now(), account, value))
                if floor is not None:
                    if value < floor:
                        self.backwards += 1
                    self._floor[account] = max(self._floor[account], value)
                self.reads.append(time.monotonic())

    def start(self) -> list[asyncio.Task[None]]:
        """Start every writer and reader; gather the tasks after ``stop()``."""
        tasks = [asyncio.create_task(self.writer(w)) for w in range(WRITERS)]
        return tasks + [asyncio.create_task(self.reader(r)) for r in range(READERS)]

    def stop(self) -> None:
        self._stop.set()

    async def settle(self) -> list[str]:
        """Retry every transfer still without an answer; returns those that never settled."""
        pending = [b for i, b in self.sent.items() if i not in self.acked]
        deadline = time.monotonic() + SETTLE_SECONDS
        async with self.client() as http:
            while pending and time.monotonic() < deadline:
                results = await asyncio.gather(
                    *(self._submit(http, b, f"settle-{n}") for n, b in enumerate(pending))
                )
                pending = [b for b, done in zip(pending, results, strict=True) if not done]
                if pending:
                    await asyncio.sleep(0.5)
        return [body["id"] for body in pending]

    async def resolve(self, transfer_ids: list[str]) -> None:
        """Ask the ledger whether each of ``transfer_ids`` (never answered) committed, and
        put its answer in the history; one it will not answer stays unresolved."""
        deadline = time.monotonic() + SETTLE_SECONDS  # for them all: a dead gateway
        async with self.client() as http:  # must not cost SETTLE_SECONDS per id
            for transfer_id in transfer_ids:
                while time.monotonic() < deadline:
                    try:
                        response = await http.get(f"/v1/transfers/{transfer_id}")
                    except httpx.TransportError:
                        response = None
                    if response is not None and response.status_code in (200, 404):
                        committed = response.status_code == 200
                        self._record(Resolution(transfer_id, committed, now()))
                        break
                    await asyncio.sleep(0.5)


def _problem(response: httpx.Response) -> str:
    """The stable code of a refusal's problem body (tokpay.api.problems), if it has one."""
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


def _spread(prefix: str, count: int, shard_count: int) -> list[str]:
    """``count`` account ids starting with ``prefix``, as evenly over the shards as can
    be (at least two per shard), so every shard's route has payers and payees."""
    per_shard = max(2, -(-count // shard_count))
    chosen: dict[int, list[str]] = {shard: [] for shard in range(shard_count)}
    n = 0
    while any(len(ids) < per_shard for ids in chosen.values()):
        candidate = f"{prefix}{n}"
        n += 1
        ids = chosen[shard_of(candidate, shard_count)]
        if len(ids) < per_shard:
            ids.append(candidate)
    return [account for ids in chosen.values() for account in ids]


def _homed(base: str, shard: int | None, shard_count: int) -> str:
    """``base``, or ``base`` with a suffix, so its home (``home_of``) is ``shard``."""
    if shard is None:
        return base
    candidate, n = base, 0
    while home_of(candidate, shard_count) != shard:
        n += 1
        candidate = f"{base}-{n}"
    return candidate
