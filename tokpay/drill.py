"""Failover drills: load through the gateway, SIGKILL one part of the cluster, audit.

A drill opens fresh accounts, runs transfers and balance reads through the HTTP
gateway, kills a target with SIGKILL (a node: every process of its session; or the
gateway), keeps the load going, restarts what a supervisor would restart, and then
checks, with the ledger's own answers:

- every acknowledged transfer is in the ledger (lost must be 0);
- no transfer is listed twice and every balance equals a replay of the transfers the
  ledger holds (applied twice must be 0);
- the sum of all balances is zero;
- no read saw a smaller balance on a receive-only account than a read that had
  completed before it started (reads went backwards must be 0);
- how long after the kill writes to every shard and through 2PC succeeded again;
- reads/s and writes/s before, during and after.

Transfers whose answer was lost are retried with the same id until they settle:
the ledger's idempotency makes that safe, and it is what real clients do.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokpay.ledger.routing import shard_of

PAYERS = 24
SINKS = 12
INITIAL = 10**9
WRITERS = 12
READERS = 4
REQUEST_TIMEOUT_SECONDS = 20.0
RESUME_WAIT_SECONDS = 60.0
"""How long the load waits for writes to resume before the drill counts it a failure."""
AFTER_RESUME_SECONDS = 4.0
STALL_SECONDS = 2.0
"""A route with no acknowledged write for this long counts as stalled: the load goes on."""
SETTLE_SECONDS = 60.0
"""After the load stops: how long unanswered transfers are retried before counting as unknown."""


@dataclass
class Rates:
    reads: float
    writes: float


@dataclass
class DrillReport:
    target: str
    victim: str
    acknowledged: int = 0
    lost: int = 0
    doubled: int = 0
    unsettled: int = 0
    sum_of_balances: int | None = None
    backwards_reads: int = 0
    write_resume_seconds: float | None = None
    write_outage_seconds: float | None = None
    rates: dict[str, Rates] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class _Events:
    """Successful reads and writes by completion time (for the per-phase rates)."""

    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)

    def rate(self, kind: str, start: float, end: float) -> float:
        if end <= start:
            return 0.0
        stamps = self.reads if kind == "reads" else self.writes
        return sum(1 for t in stamps if start <= t < end) / (end - start)


class DrillLoad:
    """Writers and readers against one gateway, with the bookkeeping the audit needs."""

    def __init__(self, base_url: str, shard_count: int, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.shard_count = shard_count
        self.headers = headers
        run = secrets.token_hex(3)
        self.payers = [f"drill-{run}-p{i}" for i in range(PAYERS)]
        self.sinks = [f"drill-{run}-s{i}" for i in range(SINKS)]
        self.sent: dict[str, dict[str, Any]] = {}
        self.acked: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.events = _Events()
        self.backwards = 0
        self.errors: dict[str, int] = {}
        # Reads completed so far, per sink: (value) — a later read may not be lower.
        self._floor: dict[str, int] = dict.fromkeys(self.sinks, 0)
        # Per route key (a shard, or "2pc"): (submitted, acknowledged) times.
        self.acks: list[tuple[str, float, float]] = []
        self._stop = asyncio.Event()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=WRITERS + READERS + 4),
        )

    async def open_accounts(self) -> None:
        async with self.client() as http:
            for account in self.payers + self.sinks:
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

    async def _submit(self, http: httpx.AsyncClient, body: dict[str, Any]) -> bool:
        """One attempt; True once the ledger gave a definitive answer."""
        try:
            response = await http.post("/v1/transfers", json=body)
        except httpx.HTTPError as error:
            self._count(type(error).__name__)
            return False
        if response.status_code in (200, 201):
            self.acked[body["id"]] = body
            return True
        if response.status_code >= 500 or response.status_code == 429:
            self._count(str(response.status_code))
            return False
        # A refusal (4xx) is final; 409 for our own retry would be a violation.
        self.refused[str(response.status_code)] = self.refused.get(str(response.status_code), 0) + 1
        return True

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def writer(self, worker: int) -> None:
        rng = random.Random(worker)
        targets = self.payers + self.sinks
        async with self.client() as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                payer = rng.choice(self.payers)
                payees = rng.sample([a for a in targets if a != payer], rng.randint(1, 3))
                transfer_id = f"{payer}-w{worker}-{n}"
                body: dict[str, Any] = {
                    "id": transfer_id,
                    "from": payer,
                    "to": [{"account": p, "amount": rng.randint(1, 100)} for p in payees],
                    "currency": "USD",
                }
                self.sent[transfer_id] = body
                submitted = time.monotonic()
                # The same id until a definitive answer: what a real client does.
                while not await self._submit(http, body):
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(0.05)
                if transfer_id in self.acked:
                    now = time.monotonic()
                    self.events.writes.append(now)
                    self.acks.append((self._route(body), submitted, now))

    async def reader(self, worker: int) -> None:
        rng = random.Random(1000 + worker)
        async with self.client() as http:
            while not self._stop.is_set():
                account = rng.choice(self.sinks)
                floor = self._floor[account]
                try:
                    response = await http.get(f"/v1/accounts/{account}/balance")
                except httpx.HTTPError as error:
                    self._count(type(error).__name__)
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code != 200:
                    self._count(f"read {response.status_code}")
                    await asyncio.sleep(0.05)
                    continue
                value = int(response.json()["balance"])
                if value < floor:
                    self.backwards += 1
                self._floor[account] = max(self._floor[account], value)
                self.events.reads.append(time.monotonic())

    def stop(self) -> None:
        self._stop.set()

    async def settle(self) -> int:
        """Retry every transfer still without an answer; returns those that never settled."""
        pending = [b for i, b in self.sent.items() if i not in self.acked]
        deadline = time.monotonic() + SETTLE_SECONDS
        async with self.client() as http:
            while pending and time.monotonic() < deadline:
                results = await asyncio.gather(*(self._submit(http, b) for b in pending))
                pending = [b for b, done in zip(pending, results, strict=True) if not done]
                if pending:
                    await asyncio.sleep(0.5)
        return len(pending)

    async def audit(self, report: DrillReport) -> None:
        async with self.client() as http:
            committed: dict[str, dict[str, Any]] = {}
            for account in self.payers + self.sinks:
                ids: list[str] = []
                cursor = None
                while True:
                    params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
                    page = await _get_json(http, f"/v1/accounts/{account}/transfers", params=params)
                    for item in page["items"]:
                        ids.append(item["id"])
                        committed[item["id"]] = item
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                report.doubled += len(ids) - len(set(ids))
            report.lost = sum(1 for i in self.acked if i not in committed)
            replayed = dict.fromkeys(self.payers + self.sinks, 0)
            for item in committed.values():
                if item["kind"] == "payment":
                    replayed[item["from"]] -= item["amount"]
                for leg in item["to"]:
                    replayed[leg["account"]] += leg["amount"]
            lookup = await _get_json(
                http, "/v1/balances/lookup", body={"account_ids": self.payers + self.sinks}
            )
            actual = {row["account_id"]: row["balance"] for row in lookup["balances"]}
            report.doubled += sum(1 for a, v in actual.items() if v != replayed[a])
            summary = await _get_json(http, "/v1/ledger/summary")
            report.sum_of_balances = sum(
                c["sum_of_balances"] for c in summary["currencies"].values()
            )

    def resume_seconds(self, killed_at: float) -> float | None:
        """Per route (a shard, or "2pc"), the first acknowledgement of a write submitted
        after the kill; the slowest of them. None until every route that took writes
        before the kill has taken one again."""
        before = {route for route, submitted, _ in self.acks if submitted < killed_at}
        first: dict[str, float] = {}
        for route, submitted, acked in self.acks:
            if submitted >= killed_at and route not in first:
                first[route] = acked - killed_at
        if not first or not before <= first.keys():
            return None
        return max(first.values())

    def outage_seconds(self, killed_at: float, ended_at: float) -> float:
        """The longest time any route went without an acknowledged write after the kill.

        Counts from the kill to the first acknowledgement, between acknowledgements, and
        from the last one to the end of the load. An outage that starts late (a lease
        running out a second after the head dies) is caught too.
        """
        times: dict[str, list[float]] = {}
        for route, _, acked in self.acks:
            if acked >= killed_at:
                times.setdefault(route, []).append(acked)
        routes = {route for route, _, _ in self.acks}
        worst = 0.0
        for route in routes:
            points = [killed_at, *sorted(times.get(route, [])), ended_at]
            worst = max(worst, *(b - a for a, b in itertools.pairwise(points)))
        return worst

    def stalled(self, now: float) -> bool:
        """Whether some route that takes writes has had none acknowledged lately."""
        last: dict[str, float] = {}
        for route, _, acked in self.acks:
            last[route] = max(last.get(route, 0.0), acked)
        return any(now - t > STALL_SECONDS for t in last.values())


async def _get_json(
    http: httpx.AsyncClient,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """An audit read, retried while the ledger answers 503 (a failover still settling)."""
    deadline = time.monotonic() + SETTLE_SECONDS
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
            raise RuntimeError(f"{path} still failing after {SETTLE_SECONDS} s")
        await asyncio.sleep(0.5)


Progress = Callable[[str, DrillLoad], None]


async def run_drill(
    base_url: str,
    shard_count: int,
    target: str,
    kill: Callable[[], str],
    recover: Callable[[], None],
    *,
    before_seconds: float = 5.0,
    after_seconds: float = 10.0,
    headers: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> DrillReport:
    """One drill: load, kill (``kill`` returns what it killed), keep loading, audit.

    ``recover`` runs after the load ends (restart what a supervisor would).
    """
    load = DrillLoad(base_url, shard_count, headers or {})
    show: Progress = progress or (lambda phase, _: None)
    show("opening accounts", load)
    await load.open_accounts()
    tasks = [asyncio.create_task(load.writer(w)) for w in range(WRITERS)]
    tasks += [asyncio.create_task(load.reader(r)) for r in range(READERS)]
    started = time.monotonic()
    while time.monotonic() - started < before_seconds:
        show("load before the kill", load)
        await asyncio.sleep(0.25)
    killed_at = time.monotonic()
    victim = await asyncio.to_thread(kill)
    report = DrillReport(target=target, victim=victim)
    # At least ``after_seconds``; longer while writes have not resumed everywhere (up to
    # RESUME_WAIT_SECONDS), then AFTER_RESUME_SECONDS more of steady load.
    while True:
        now = time.monotonic()
        elapsed = now - killed_at
        resumed = load.resume_seconds(killed_at)
        if elapsed >= RESUME_WAIT_SECONDS:
            break
        settled = resumed is not None and not load.stalled(now)
        if settled and elapsed >= max(after_seconds, (resumed or 0.0) + AFTER_RESUME_SECONDS):
            break
        state = "writes resumed" if resumed is not None else "waiting for writes to resume"
        show(f"killed {victim}; load continues ({state})", load)
        await asyncio.sleep(0.25)
    load.stop()
    show("stopping the load", load)
    await asyncio.gather(*tasks)
    ended = time.monotonic()
    show("restarting what was killed", load)
    await asyncio.to_thread(recover)
    show("settling unanswered transfers", load)
    report.unsettled = await load.settle()
    show("auditing", load)
    await load.audit(report)
    report.acknowledged = len(load.acked)
    report.backwards_reads = load.backwards
    report.errors = dict(load.errors)
    report.write_resume_seconds = load.resume_seconds(killed_at)
    report.write_outage_seconds = load.outage_seconds(killed_at, ended)
    resumed_at = killed_at + (report.write_resume_seconds or 0.0)
    for phase, (start, end) in {
        "before": (started, killed_at),
        "during": (killed_at, resumed_at),
        "after": (resumed_at, ended),
    }.items():
        report.rates[phase] = Rates(
            reads=load.events.rate("reads", start, end),
            writes=load.events.rate("writes", start, end),
        )
    _judge(report)
    return report


def _judge(report: DrillReport) -> None:
    if report.lost:
        report.violations.append(f"{report.lost} acknowledged transfers lost")
    if report.doubled:
        report.violations.append(f"{report.doubled} transfers applied twice / balances off")
    if report.sum_of_balances != 0:
        report.violations.append(f"sum of balances is {report.sum_of_balances}, not 0")
    if report.backwards_reads:
        report.violations.append(f"{report.backwards_reads} reads went backwards")
    if report.unsettled:
        report.violations.append(f"{report.unsettled} transfers never got an answer")
    if report.write_resume_seconds is None:
        report.violations.append("writes never succeeded again after the kill")
    elif (
        report.write_outage_seconds is not None
        and report.write_outage_seconds >= RESUME_WAIT_SECONDS
    ):
        report.violations.append(f"writes stopped for {report.write_outage_seconds:.0f} s")
    if report.acknowledged == 0:
        report.violations.append("no transfer was acknowledged")
