"""Cross-shard transfers while one shard's primary is stopped (SIGSTOP) or its node is cut
off (--partition): what keeps flowing.

Load goes through the HTTP gateway in three classes of writers, each sending one transfer
at a time and moving on after any answer (a 503 is counted, never retried away):

- healthy: payer and payee on two shards other than the victim, ids homed off it;
- id-home: accounts off the victim, but ids homed on it (the id is claimed there first);
- victim: one of the two accounts on the victim shard.

After --before seconds the victim's primary process is SIGSTOPped for --stop seconds, then
SIGCONT, and the load runs --after seconds more. Each class's acknowledged transfers per
second and its 503s are counted per phase. Afterwards every transfer answered 503 is
retried with its id until it settles, and the sum of the bench's balances is checked.

Single node (default): starts `tokpay serve` on --port in a fresh /tmp/stall-* directory.
With --cluster DATA_DIR: a running `tokpay cluster up` cluster whose gateway is on --port;
the victim group's primary at the time of the stop is the one stopped.

With --partition (a `tokpay cluster up --netns` cluster): instead of a SIGSTOP, the node
holding the victim's primary loses its cable for --stop seconds (tokpay.testing.partition),
then is healed (and restarted if Ray's GCS declared it dead meanwhile). Every shard whose
primary is on that node counts as a victim; healthy writers pay among the others (their
backups may be on the cut node: those are rebuilt elsewhere while the load runs).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import home_of

CLASSES = ("healthy", "id-home", "victim")
PHASES = ("before", "stopped", "after")
FUNDS = 10**9
ACCOUNTS_PER_SHARD = 8
REQUEST_TIMEOUT_SECONDS = 60.0
SETTLE_SECONDS = 120.0
PROGRESS_SECONDS = 2.0


@dataclass
class Answer:
    kind: str
    body: dict[str, Any]
    started: float
    finished: float
    status: str
    """The HTTP status, or the name of the error when there was no answer."""

    @property
    def acked(self) -> bool:
        return self.status in ("200", "201")


class Load:
    """The writers and what they were answered."""

    def __init__(self, url: str, shards: int, victims: set[int]) -> None:
        self.url, self.shards, self.victims = url, shards, victims
        run = secrets.token_hex(3)
        names = (f"st-{run}-{n}" for n in itertools.count())
        self.accounts: dict[int, list[str]] = {s: [] for s in range(shards)}
        while any(len(ids) < ACCOUNTS_PER_SHARD for ids in self.accounts.values()):
            name = next(names)
            self.accounts[shard_of(name, shards)].append(name)
        self.answers: list[Answer] = []
        self.stop = asyncio.Event()
        self._ids = (f"st-{run}-t{n}" for n in itertools.count())

    def http(self, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=REQUEST_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=connections),
        )

    async def open_accounts(self) -> None:
        async with self.http(8) as http:
            for account in (a for ids in self.accounts.values() for a in ids):
                body = {"id": account, "currency": "USD", "owner": f"{account}@bench.example"}
                await self._until_done(http, "/v1/accounts", body)
                topup = {"id": f"top-{account}", "account": account, "amount": FUNDS}
                await self._until_done(http, "/v1/topups", topup | {"currency": "USD"})

    async def _until_done(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> bool:
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            try:
                response = await http.post(path, json=body)
                if response.status_code < 300:
                    return True
                if response.status_code < 500:
                    raise RuntimeError(f"{path} refused: {response.status_code} {response.text}")
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        return False

    def _next_id(self, homed_on_victim: bool) -> str:
        while True:
            candidate = next(self._ids)
            if (home_of(candidate, self.shards) in self.victims) == homed_on_victim:
                return candidate

    def _order(self, kind: str, rng: random.Random) -> dict[str, Any]:
        others = [s for s in range(self.shards) if s not in self.victims]
        if kind == "victim":
            pair = [rng.choice(others), rng.choice(sorted(self.victims))]
            rng.shuffle(pair)
        else:
            pair = rng.sample(others, 2)
        return {
            "id": self._next_id(kind == "id-home"),
            "from": rng.choice(self.accounts[pair[0]]),
            "to": [{"account": rng.choice(self.accounts[pair[1]]), "amount": 1}],
            "currency": "USD",
        }

    async def writer(self, kind: str, seed: int) -> None:
        rng = random.Random(seed)
        async with self.http(1) as http:
            while not self.stop.is_set():
                body = self._order(kind, rng)
                started = time.monotonic()
                try:
                    status = str((await http.post("/v1/transfers", json=body)).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                self.answers.append(Answer(kind, body, started, time.monotonic(), status))

    async def settle(self) -> int:
        """Retry every transfer without a final answer; returns how many never settled."""
        pending = [a.body for a in self.answers if not a.status.startswith(("2", "4"))]
        async with self.http(16) as http:
            done = await asyncio.gather(
                *(self._until_done(http, "/v1/transfers", b) for b in pending)
            )
        return done.count(False)

    async def balance_sum(self) -> int:
        async with self.http(8) as http:
            total = 0
            for account in (a for ids in self.accounts.values() for a in ids):
                response = await http.get(f"/v1/accounts/{account}/balance")
                response.raise_for_status()
                total += int(response.json()["balance"])
            return total


@dataclass
class Fault:
    """What the run does to its victims: ``begin`` at the stop, ``end`` at the resume,
    ``recover`` once the load is over (before the retries)."""

    victims: set[int]
    what: str
    begin: Callable[[], None]
    end: Callable[[], None]
    recover: Callable[[], None] = lambda: None


def stop_process(victim: int, pid: int) -> Fault:
    return Fault(
        {victim},
        f"victim shard {victim}: process {pid}",
        lambda: os.kill(pid, signal.SIGSTOP),
        lambda: os.kill(pid, signal.SIGCONT),
    )


def victim_pid_single(data_dir: Path, victim: int) -> int:
    # The server's Ray uses token authentication, which a driver given an explicit address
    # presents only if told before Ray is imported (nothing here imported it yet).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from tokpay.client import connect

    ledger = connect((data_dir / "run" / "ray-address").read_text())
    pid: int = ray.get(ledger.handles.shards[victim].replica_status.remote()).pid
    return pid


def cluster_status(cluster_dir: Path) -> tuple[Any, Any]:
    """(the ``ray`` module joined to the cluster in ``cluster_dir``, its controller's
    status)."""
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE
    from tokpay.cluster.deploy import join
    from tokpay.cluster.local import LocalCluster

    cluster = LocalCluster.load(cluster_dir)
    ray = join(cluster.ray_address, cluster.auth_token_path)
    return ray, ray.get(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE).status.remote())


def victim_pid_cluster(cluster_dir: Path, victim: int) -> int:
    from tokpay.actors.naming import NAMESPACE, shard_group

    ray, status = cluster_status(cluster_dir)
    (group,) = [g for g in status.groups if g.group == shard_group(victim)]
    replica = ray.get_actor(group.primary.name, namespace=NAMESPACE)
    pid: int = ray.get(replica.replica_status.remote()).pid
    return pid


def cut_victim_node(cluster_dir: Path, victim: int, shards: int) -> Fault:
    """The node of ``victim``'s primary, cut off both ways; every shard it is primary of
    is a victim."""
    from tokpay.actors.naming import shard_group
    from tokpay.cluster import netns
    from tokpay.cluster.local import LocalCluster
    from tokpay.testing import partition

    cluster = LocalCluster.load(cluster_dir)
    partition.require_netns(cluster)
    _, status = cluster_status(cluster_dir)
    primaries = {g.group: g.primary.node for g in status.groups if g.primary is not None}
    node = primaries[shard_group(victim)]
    victims = {s for s in range(shards) if primaries.get(shard_group(s)) == node}
    if shards - len(victims) < 2:
        raise SystemExit(f"node {node} holds the primaries of shards {sorted(victims)}: "
                         "fewer than two shards are left to pay among")  # fmt: skip
    index = netns.node_index(node)
    coordinator = " and the coordinator's" if primaries.get("coordinator") == node else ""
    return Fault(
        victims,
        f"node {node} (primaries of shards {sorted(victims)}{coordinator})",
        lambda: partition.cut(index),
        lambda: partition.uncut(index),
        lambda: partition.restart_if_dead(cluster, node),
    )


def phase_of(at: float, stopped: float, resumed: float) -> str:
    return "before" if at < stopped else "stopped" if at < resumed else "after"


async def progress(load: Load, began: float, stopped: float, resumed: float) -> None:
    seen = 0
    while not load.stop.is_set():
        await asyncio.sleep(PROGRESS_SECONDS)
        fresh = load.answers[seen:]
        seen += len(fresh)
        now = time.monotonic()
        rates = ", ".join(
            f"{k} {sum(1 for a in fresh if a.kind == k and a.acked) / PROGRESS_SECONDS:.0f}/s"
            for k in CLASSES
        )
        errors = sum(1 for a in load.answers if a.status == "503")
        phase = phase_of(now, stopped, resumed)
        print(f"t={now - began:5.1f}s {phase:8} acks: {rates}; 503s so far: {errors}", flush=True)


async def run(load: Load, args: argparse.Namespace, fault: Fault) -> dict[str, Any]:
    await load.open_accounts()
    began = time.monotonic()
    stopped, resumed = began + args.before, began + args.before + args.stop
    counts = {
        "healthy": args.writers,
        "id-home": args.id_home_writers,
        "victim": args.victim_writers,
    }
    tasks = [
        asyncio.create_task(load.writer(kind, 1000 * i + n))
        for i, kind in enumerate(CLASSES)
        for n in range(counts[kind])
    ]
    tasks.append(asyncio.create_task(progress(load, began, stopped, resumed)))
    await asyncio.sleep(args.before)
    fault.begin()
    stopped = time.monotonic()
    print(f"{fault.what}: {'cut off' if args.partition else 'stopped'}", flush=True)
    try:
        await asyncio.sleep(args.stop)
    finally:
        fault.end()
    resumed = time.monotonic()
    print(f"{fault.what}: {'healed' if args.partition else 'resumed'}", flush=True)
    await asyncio.sleep(args.after)
    load.stop.set()
    await asyncio.gather(*tasks)
    ended = time.monotonic()
    await asyncio.to_thread(fault.recover)
    unsettled = await load.settle()
    spans = {"before": stopped - began, "stopped": resumed - stopped, "after": ended - resumed}
    table: dict[str, dict[str, Any]] = {}
    for kind in CLASSES:
        for phase in PHASES:
            mine = [a for a in load.answers if a.kind == kind]
            done = [a for a in mine if phase_of(a.finished, stopped, resumed) == phase]
            answered_503 = [a for a in done if a.status == "503"]
            table[f"{kind}/{phase}"] = {
                "acks_per_second": sum(1 for a in done if a.acked) / spans[phase],
                "503": len(answered_503),
                "other_errors": sum(1 for a in done if not a.acked and a.status != "503"),
                "slowest_503_seconds": max(
                    (a.finished - a.started for a in answered_503), default=0
                ),
            }
    total = await load.balance_sum()
    expected = FUNDS * sum(len(ids) for ids in load.accounts.values())
    return {
        "table": table,
        "unsettled": unsettled,
        "sum_ok": total == expected,
        "what": fault.what,
    }


def markdown(result: dict[str, Any], args: argparse.Namespace, where: str) -> str:
    table = result["table"]
    ratio = table["healthy/stopped"]["acks_per_second"] / max(
        table["healthy/before"]["acks_per_second"], 1e-9
    )
    lines = [
        f"### {where}: {result['what']} "
        f"{'cut off' if args.partition else 'stopped'} for {args.stop:.0f} s",
        "",
        f"`{args.command}`",
        "",
        "| class | before (acks/s, 503s) | stopped | after | slowest 503 while stopped |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in CLASSES:
        cells = [
            f"{table[f'{kind}/{p}']['acks_per_second']:.0f}/s, {table[f'{kind}/{p}']['503']}"
            for p in PHASES
        ]
        slowest = table[f"{kind}/stopped"]["slowest_503_seconds"]
        lines.append(f"| {kind} | {' | '.join(cells)} | {slowest:.1f} s |")
    lines += [
        "",
        f"Healthy rate while stopped / before: {ratio:.2f}x. After the run every 503 was "
        f"retried with its id: {result['unsettled']} never settled; sum of the bench's "
        f"balances {'as funded' if result['sum_ok'] else 'WRONG'}.",
        "",
    ]
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=4, help="shards of the ledger (4)")
    parser.add_argument("--victim", type=int, help="the shard to stop (default: the last)")
    parser.add_argument("--port", type=int, default=19100, help="gateway port (19100)")
    parser.add_argument("--cluster", type=Path, help="a running cluster's DATA_DIR")
    parser.add_argument("--before", type=float, default=10.0, help="seconds before the stop")
    parser.add_argument("--stop", type=float, default=20.0, help="seconds stopped (20)")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after SIGCONT")
    parser.add_argument("--writers", type=int, default=24, help="healthy writers (24)")
    parser.add_argument("--id-home-writers", type=int, default=4, help="id-home writers (4)")
    parser.add_argument("--victim-writers", type=int, default=4, help="victim writers (4)")
    parser.add_argument("--markdown", type=Path, help="append the figures here as markdown")
    parser.add_argument(
        "--partition",
        action="store_true",
        help="cut the victim primary's node off instead of stopping the process "
        "(--cluster of a `cluster up --netns` only)",
    )
    args = parser.parse_args()
    if args.partition and args.cluster is None:
        parser.error("--partition needs --cluster (a `tokpay cluster up --netns` cluster)")
    if args.victim is None:
        args.victim = args.shards - 1
    args.command = "python bench/stalled_shard.py " + " ".join(sys.argv[1:])
    return args


@dataclass
class Target:
    url: str
    where: str
    fault: Callable[[], Fault]
    """Looked up before the load: joining Ray blocks the event loop for a moment."""


@contextmanager
def target_of(args: argparse.Namespace) -> Iterator[Target]:
    """The cluster given, or a fresh single-node server (stopped and deleted afterwards)."""
    if args.cluster is not None:
        yield Target(
            f"http://127.0.0.1:{args.port}",
            f"3-node cluster, {args.shards} shards",
            (lambda: cut_victim_node(args.cluster, args.victim, args.shards))
            if args.partition
            else (lambda: stop_process(args.victim, victim_pid_cluster(args.cluster, args.victim))),
        )
        return
    from tokpay.testing.localserver import LocalServer

    work = Path(tempfile.mkdtemp(prefix="stall-", dir="/tmp"))
    server = LocalServer(work / "data", shards=args.shards)
    server.port, server.url = args.port, f"http://127.0.0.1:{args.port}"
    try:
        server.start()
        yield Target(
            server.url,
            f"single node, {args.shards} shards",
            lambda: stop_process(args.victim, victim_pid_single(work / "data", args.victim)),
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args = arguments()
    with target_of(args) as target:
        fault = target.fault()
        load = Load(target.url, args.shards, fault.victims)
        result = asyncio.run(run(load, args, fault))
    text = markdown(result, args, target.where)
    print(text)
    if args.markdown is not None:
        with args.markdown.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
