"""Soak of one ``tokpay serve`` (4 shards, fsync on) to millions of transfers (issue 10).

Batched Ray-client load (a child process per server lifetime: a Ray driver does not
outlive its cluster) and light HTTP load; samples RSS per shard and coordinator process,
disk per replica, throughput and p99; SIGKILLs the server's session at each --kill-at,
restarts it, times how long until it serves and audits every balance. Then history pages
at random depths and first-minute replays; writes samples.json, summary.json, soak.png
and prints PASS/FAIL per target (exit 1 on any FAIL), scaled to --transfers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import httpx
import soak_plot

from tokpay.ledger.routing import shard_of
from tokpay.testing.localserver import LocalServer

HERE = Path(__file__).resolve().parent
GATEWAY_PORT = 18600
DEV_IDP_PORT = 18601
CURRENCY = "USD"
TOPUP = 10**9
HOT_ACCOUNT = "soak-hot"
CROSS_SHARE = 0.2
HOT_ODDS_HOME = 0.4
"""Odds a credit of a single-shard transfer on the hot account's shard goes to it..."""
HOT_ODDS_CROSS = 0.1
"""...and of a cross-shard one: together about 10% of all credits."""
FIRST_MINUTE_SECONDS = 60.0
KEPT_FOR_REPLAY = 20
WORKER_DONE_TIMEOUT_SECONDS = 120.0
UNCERTAIN_ERRORS = frozenset({"unavailable", "overloaded"})
"""Outcomes that may or may not have committed: retried with the same id after restart."""

Body = soak_plot.Body


@dataclass(frozen=True)
class Plan:
    """The accounts and the transfer mix, shared with the load processes."""

    by_shard: list[list[str]]
    hot_shard: int

    def transfer(self, rng: random.Random, transfer_id: str) -> Body:
        shards = len(self.by_shard)
        home = rng.randrange(shards)
        cross = rng.random() < CROSS_SHARE
        debit = rng.choice(self.by_shard[home])
        credits: dict[str, int] = {}
        for leg in range(rng.randint(1, 3)):
            shard = (home + 1) % shards if cross and leg == 0 else home
            odds = HOT_ODDS_CROSS if cross else HOT_ODDS_HOME * (shard == self.hot_shard)
            account = HOT_ACCOUNT if rng.random() < odds else rng.choice(self.by_shard[shard])
            if account != debit:
                credits.setdefault(account, rng.randint(1, 100))
        if not credits:
            credits[next(a for a in self.by_shard[home] if a != debit)] = 1
        legs = [{"account": a, "amount": n} for a, n in credits.items()]
        return {"id": transfer_id, "from": debit, "to": legs, "currency": CURRENCY}

    def accounts(self) -> list[str]:
        return [a for accounts in self.by_shard for a in accounts]


def make_plan(accounts: int, shards: int) -> Plan:
    by_shard: list[list[str]] = [[] for _ in range(shards)]
    for n in range(accounts):
        by_shard[shard_of(f"soak-{n}", shards)].append(f"soak-{n}")
    return Plan(by_shard=by_shard, hot_shard=shard_of(HOT_ACCOUNT, shards))


def apply_body(deltas: Counter[str], body: Body) -> None:
    for leg in body["to"]:
        deltas[leg["account"]] += leg["amount"]
        deltas[body["from"]] -= leg["amount"]


def load_process(
    address: str, plan: Plan, phase: int, threads: int, batch: int, stop: Any, reports: Any
) -> None:
    """One server lifetime of batched load: reports each batch, then what it acknowledged
    (as balance deltas) and what it cannot know (in flight when the server died)."""
    from tokpay.client import connect
    from tokpay.ledger.model import AccountSpec, Credit, TransferOrder
    from tokpay.ledger.routing import topup_order

    ledger = connect(address)
    if phase == 0:
        names = [*plan.accounts(), HOT_ACCOUNT]
        specs = [AccountSpec(id=a, currency=CURRENCY, owner=f"{a}@soak.example") for a in names]
        ledger.create_accounts(specs)
        topups = [topup_order(f"top-{a}", a, TOPUP, CURRENCY, len(plan.by_shard)) for a in names]
        if any(o.transfer is None for o in ledger.submit_many(topups[:-1])):
            raise RuntimeError("a top-up was refused")
        reports.put(("ready",))
    deltas: Counter[str] = Counter()
    uncertain: list[Body] = []
    lock = threading.Lock()

    def drive(thread: int) -> None:
        rng = random.Random(f"{phase}-{thread}")
        n = 0
        while not stop.is_set():
            bodies = [plan.transfer(rng, f"p{phase}t{thread}n{n + i}") for i in range(batch)]
            n += batch
            orders = [
                TransferOrder(id=b["id"], debit=b["from"], currency=CURRENCY,
                              credits=tuple(Credit(g["account"], g["amount"]) for g in b["to"]))
                for b in bodies
            ]  # fmt: skip
            started = time.perf_counter()
            try:
                outcomes = ledger.submit_many(orders)
            except Exception:  # LedgerError or Ray's own, once the server is gone
                with lock:
                    uncertain.extend(bodies)
                return
            latency = time.perf_counter() - started
            committed = refused = 0
            with lock:
                for body, outcome in zip(bodies, outcomes, strict=True):
                    if outcome.transfer is not None:
                        committed += 1
                        apply_body(deltas, body)
                    elif outcome.error in UNCERTAIN_ERRORS:
                        uncertain.append(body)
                    else:
                        refused += 1
            reports.put(("batch", committed, refused, latency))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(drive, range(threads)))
    reports.put(("done", dict(deltas), uncertain))
    reports.close()
    reports.join_thread()
    # Ray's exit hooks wait on a cluster that may be dead: leave without them.
    os._exit(0)


@dataclass
class Book:
    """Expected balances from acknowledged transfers, and what is left to retry."""

    expected: Counter[str] = field(default_factory=Counter)
    committed: int = 0
    refused: int = 0
    uncertain: list[Body] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledge(self, body: Body) -> None:
        with self.lock:
            apply_body(self.expected, body)
            self.committed += 1


class HttpLoad(threading.Thread):
    """Balance reads (~10/s), transfers (~2/s) and history pages (~1/s) through HTTP."""

    def __init__(self, url: str, plan: Plan, book: Book) -> None:
        super().__init__(daemon=True)
        self.url, self.plan, self.book = url, plan, book
        self.pause, self.idle, self.halt = threading.Event(), threading.Event(), threading.Event()
        self.started_at = 0.0  # when the load starts: the first minute is counted from there
        self.kept: list[tuple[Body, Body]] = []
        self.requests = self.errors = 0

    def run(self) -> None:
        rng, names, tick = random.Random(7), self.plan.accounts(), 0
        self.started_at = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.halt.is_set():
                if self.pause.is_set():
                    self.idle.set()
                    time.sleep(0.05)
                    continue
                self.idle.clear()
                tick += 1
                try:
                    self._step(http, rng, names, tick)
                except httpx.HTTPError:
                    self.errors += 1
                time.sleep(0.1)

    def _step(self, http: httpx.Client, rng: random.Random, names: list[str], tick: int) -> None:
        self.requests += 1
        if tick % 5 == 0:
            body = self.plan.transfer(rng, f"http-{tick}")
            try:
                response = http.post("/v1/transfers", json=body)
            except httpx.HTTPError:
                with self.book.lock:
                    self.book.uncertain.append(body)
                raise
            if response.status_code >= 500 or response.status_code == 429:
                with self.book.lock:
                    self.book.uncertain.append(body)
            if response.status_code != 201:
                self.errors += 1
                return
            self.book.acknowledge(body)
            first_minute = time.monotonic() - self.started_at < FIRST_MINUTE_SECONDS
            if first_minute and len(self.kept) < KEPT_FOR_REPLAY:
                self.kept.append((body, response.json()))
        elif tick % 10 == 3:
            account = HOT_ACCOUNT if tick % 20 == 3 else rng.choice(names)
            response = http.get(f"/v1/accounts/{account}/transfers", params={"limit": 50})
            self.errors += response.status_code != 200
        else:
            response = http.get(f"/v1/accounts/{rng.choice(names)}/balance")
            self.errors += response.status_code != 200

    def hold(self) -> None:
        self.pause.set()
        self.idle.wait(60)

    def resume(self) -> None:
        self.pause.clear()


class Soak:
    """One soak run: the server, the two loads, the samples and the kill points."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.plan = make_plan(args.accounts, args.shards)
        self.server = LocalServer(data_dir, shards=args.shards)
        # The brief's ports, and the same one again after each restart.
        self.server.port = GATEWAY_PORT
        self.server.url = f"http://127.0.0.1:{GATEWAY_PORT}"
        self.book = Book()
        self.http = HttpLoad(self.server.url, self.plan, self.book)
        self.context = mp.get_context("spawn")
        self.worker: Any = None  # the load process of the current server lifetime
        self.stop_load: Any = None
        self.reports: Any = self.context.Queue()
        self.phase = -1
        self.started = time.monotonic()
        self.last_sample = (self.started, 0)
        self.latencies: list[float] = []
        self.samples: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.timeline: list[tuple[int, float, int]] = []
        """(server lifetime, time, committed) after each batch: throughput by window."""

    def run(self) -> dict[str, Any]:
        kill_at = self.args.kill_at
        print(f"starting tokpay serve on {self.server.data_dir} (port {GATEWAY_PORT})", flush=True)
        self.server.start()
        self._start_load()
        self.http.start()
        self.last_sample = (time.monotonic(), self.book.committed)
        for point in kill_at:
            next_sample = time.monotonic() + self.args.sample_seconds
            while self.book.committed < point:
                self._drain(1.0)
                if time.monotonic() >= next_sample:
                    self._sample()
                    next_sample += self.args.sample_seconds
            self._sample(before_kill=point)
            self.restarts.append(self._kill_and_recover(point))
            if point != kill_at[-1]:
                self._start_load()
                self.http.resume()
        self._sample(after_end=True)  # the disk after the last recovery's checkpoints
        history = soak_plot.history_probe(self.server.url, HOT_ACCOUNT)
        replay = soak_plot.replay_check(self.server.url, self.http.kept)
        disk_bytes = sum(self.samples[-1]["disk_mib"].values()) * soak_plot.MIB
        args, book = self.args, self.book
        return {
            "transfers": args.transfers, "kill_at": kill_at, "accounts": args.accounts,
            "committed": book.committed, "refused": book.refused,
            "http": {"requests": self.http.requests, "errors": self.http.errors},
            "elapsed_s": time.monotonic() - self.started, "restarts": self.restarts,
            "history": history, "replay": replay,
            "disk_bytes_per_transfer_per_copy": disk_bytes / soak_plot.COPIES / book.committed,
            "timeline": self.timeline,
        }  # fmt: skip

    def _start_load(self) -> None:
        self.phase += 1
        address = (self.server.data_dir / "run" / "ray-address").read_text()
        self.stop_load = self.context.Event()
        self.worker = self.context.Process(
            target=load_process,
            args=(address, self.plan, self.phase, self.args.threads, self.args.batch,
                  self.stop_load, self.reports),
        )  # fmt: skip
        self.worker.start()
        if self.phase == 0:
            while self._drain(5.0) != "ready":
                pass
            with self.book.lock:
                self.book.expected.update(dict.fromkeys(self.plan.accounts(), TOPUP))

    def _drain(self, timeout: float) -> str | None:
        """Take one report from the load process; None if there was none in time."""
        try:
            report = self.reports.get(timeout=timeout)
        except Empty:
            if self.worker is not None and self.worker.exitcode not in (None, 0):
                raise RuntimeError(f"the load process failed ({self.worker.exitcode})") from None
            return None
        if report[0] == "batch":
            _, committed, refused, latency = report
            with self.book.lock:
                self.book.committed += committed
                self.book.refused += refused
            self.latencies.append(latency)
            self.timeline.append((self.phase, time.monotonic(), self.book.committed))
        elif report[0] == "done":
            with self.book.lock:
                self.book.expected.update(report[1])
                self.book.uncertain.extend(report[2])
        return str(report[0])

    def _sample(self, before_kill: int = 0, after_end: bool = False) -> None:
        now = time.monotonic()
        then, committed_then = self.last_sample
        self.last_sample = (now, self.book.committed)
        sample = {
            "elapsed_s": round(now - self.started, 1),
            "committed": self.book.committed,
            # None after the end: no load ran in that interval.
            "throughput": None
            if after_end
            else (self.book.committed - committed_then) / max(now - then, 1e-9),
            "p99_ms": soak_plot.p99_ms(self.latencies),
            "rss_mib": soak_plot.replica_rss(
                self.server.process.pid if self.server.process else None, self.server.data_dir
            ),
            "disk_mib": soak_plot.replica_disk(self.server.data_dir),
            "phase": self.phase,
            "before_kill": before_kill,
        }
        self.latencies = []
        self.samples.append(sample)
        print(soak_plot.progress_line(sample, self.http.errors), flush=True)

    def _kill_and_recover(self, point: int) -> dict[str, Any]:
        self.http.hold()
        if self.args.kill == "replicas":
            session = self.server.process.pid if self.server.process else None
            victims = soak_plot.replica_pids(session)
            print(f"kill -9 of {len(victims)} shard and coordinator processes", flush=True)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
        else:
            self.server.kill_hard()
        # Recovery counts from here: Ray restarts the replicas while the load drains.
        killed = time.monotonic()
        self.stop_load.set()
        deadline = time.monotonic() + WORKER_DONE_TIMEOUT_SECONDS
        while self._drain(1.0) != "done":
            if time.monotonic() > deadline:
                raise RuntimeError("the load process did not report after the kill")
        self.worker.join(30)
        print(f"killed at {self.book.committed:,}; restarting", flush=True)
        started = time.monotonic()
        healthy: float | None = None
        if self.args.kill == "replicas":
            # Ray restarts each actor; the figure is the ledger's own recovery.
            healthy = None
        else:
            try:
                self.server.start()
                healthy = time.monotonic() - started
            except RuntimeError:
                # Not healthy within the harness's wait: a slow recovery is a reading,
                # not a crash of the soak, while the server still runs.
                if self.server.process is None or self.server.process.poll() is not None:
                    raise
        probe = self.plan.transfer(random.Random(point), f"probe-{point}")
        serving = soak_plot.serve_again(self.server.url, probe, killed)
        self.book.acknowledge(probe)
        # In flight at the kill: again with the same id, so each commits exactly once.
        retried, self.book.uncertain = self.book.uncertain, []
        for body in soak_plot.retry_transfers(self.server.url, retried):
            self.book.acknowledge(body)
        audit = soak_plot.audit_balances(
            self.server.url, [*self.plan.accounts(), HOT_ACCOUNT], self.book.expected
        )
        self.last_sample = (time.monotonic(), self.book.committed)
        self.latencies = []
        result = {"at": point, "committed": self.book.committed, "healthy_s": healthy,
                  "load_drained_s": started - killed,
                  "serving_s": serving, "retried": len(retried), **audit}  # fmt: skip
        print(f"restart at {point:,}: {result}", flush=True)
        return result

    def close(self) -> None:
        """Stop what this run started, whatever state it is in."""
        self.http.halt.set()
        if self.worker is not None:
            self.stop_load.set()
            self.worker.join(10)
            if self.worker.is_alive():
                self.worker.kill()
                self.worker.join(10)
        self.server.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    option = parser.add_argument
    # fmt: off
    option("--transfers", type=int, default=10_000_000,
           help="transfers to commit in all; the run ends at the last --kill-at (%(default)s)")
    option("--kill", choices=("replicas", "server"), default="replicas",
           help="what kill -9 hits at each --kill-at: every shard and coordinator process "
           "(Ray restarts them: the ledger's own recovery) or the whole server's session "
           "(Ray, gateway and all, then `tokpay serve` again) (%(default)s)")
    option("--kill-at", default="1000000,10000000",
           help="committed counts at which the server's session is SIGKILLed and restarted "
           "on the same data; the last one is the end (default: 1M and 10M)")
    option("--accounts", type=int, default=10_000, help="accounts, plus one hot account (%(default)s)")
    option("--sample-seconds", type=float, default=60.0,
           help="seconds between samples; 10 suits short runs (%(default)s)")
    option("--shards", type=int, default=4, help="shards of the fresh ledger (%(default)s)")
    option("--threads", type=int, default=4, help="batched calls the Ray client keeps in flight (%(default)s)")
    option("--batch", type=int, default=2048, help="transfers per batched call (%(default)s)")
    option("--data-dir", type=Path, help="fresh data directory (default: a new /tmp/soak-*/data)")
    option("--keep-data", action="store_true", help="keep the data directory after the run")
    option("--out", type=Path, default=HERE / "soak-out",
           help="where samples.json, summary.json and soak.png are written (bench/soak-out)")
    # fmt: on
    args = parser.parse_args()
    args.kill_at = sorted(int(k) for k in args.kill_at.split(","))
    if args.kill_at[-1] != args.transfers:
        parser.error("the last --kill-at must equal --transfers (the end of the run)")
    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        parser.error(f"{args.data_dir} is not empty: the soak starts on a fresh ledger")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    data_dir = (args.data_dir or work / "data").resolve()
    # The server's Ray uses token auth (a driver presents it only if told before import),
    # keeps its session files with ours, and the dev login listens on the brief's port.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ["RAY_TMPDIR"] = str(work)
    os.environ["TOKPAY_DEV_OIDC_PORT"] = str(DEV_IDP_PORT)
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    soak = Soak(args, data_dir)
    try:
        run = soak.run()
    except KeyboardInterrupt:
        print("interrupted: the server this run started is stopped", flush=True)
        return 130
    finally:
        soak.close()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    verdicts = soak_plot.evaluate(run, soak.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "samples.json").write_text(json.dumps(soak.samples, indent=1))
    summary = run | {"targets": soak_plot.verdicts_json(verdicts)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    soak_plot.write_plot(run, soak.samples, args.out / "soak.png")
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.target}: {verdict.measured}")
    print(f"wrote {args.out}/samples.json, summary.json, soak.png")
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
