"""What bench/soak.py reads from the server and concludes from it: RSS per shard and
coordinator process, disk per replica, the balance audit, history pages at random
depths and replays through HTTP; then issue 10's targets checked against those readings,
and soak.png (RSS, disk and throughput against transfers committed).

Targets scale with the run: RSS growth is measured between the first and last kill
points, throughput windows are the 10%..20% and 90%..100% slices of --transfers.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tokpay.cluster.sessions import session_pids

RSS_GROWTH_MIB_PER_MILLION = 32.0
THROUGHPUT_KEPT = 0.9
WARM_UP_SHARE = 0.1
WINDOW_SHARE = 0.1
DISK_BYTES_PER_TRANSFER = 300.0
RECOVERY_SECONDS = 10.0
RECOVERY_GROWTH = 1.5
HISTORY_P99_MS = 20.0
COPIES = 1
"""The single node keeps one copy of every replica's data."""
MIB = 1024 * 1024
HISTORY_PAGE = 50
HISTORY_WALK_PAGE = 200
"""Page size of the walk that collects cursors at every depth."""
HISTORY_PROBES = 400
SERVE_AGAIN_TIMEOUT_SECONDS = 900.0
"""Long enough to measure a recovery that grows with history (today's), not to wait forever."""
RETRY_THREADS = 8
REPLICA_CLASSES = ("ray::ShardActor", "ray::CoordinatorActor")

Body = dict[str, Any]


def replica_rss(session: int | None, data_dir: Path) -> dict[str, float]:
    """MiB per shard and coordinator process, named by the replica directory it writes."""
    out: dict[str, float] = {}
    for pid in session_pids(session) if session is not None else []:
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
            if not cmdline.startswith(REPLICA_CLASSES):
                continue
            paths = [Path(f.path) for f in process.open_files()]
            rss = process.memory_info().rss / MIB
        except psutil.Error:
            continue
        owned = [p.relative_to(data_dir).parts[0] for p in paths if data_dir in p.parents]
        out[owned[0] if owned else f"{cmdline.split()[0]}:{pid}"] = rss
    return out


def replica_pids(session: int | None) -> list[int]:
    """The pids of every shard and coordinator process of the server's session."""
    pids = []
    for pid in session_pids(session) if session is not None else []:
        try:
            if " ".join(psutil.Process(pid).cmdline()).startswith(REPLICA_CLASSES):
                pids.append(pid)
        except psutil.Error:
            continue
    return pids


def replica_disk(data_dir: Path) -> dict[str, float]:
    """MiB under each replica directory (every top-level directory but run/)."""
    out: dict[str, float] = {}
    for replica in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name != "run"):
        total = 0
        for root, _, files in os.walk(replica):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue  # a segment or snapshot deleted while we walked
        out[replica.name] = total / MIB
    return out


def serve_again(url: str, probe: Body, started: float) -> float:
    """Seconds from ``started`` (the kill) until a balance read and the transfer ``probe``
    both succeed."""
    read = wrote = False
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() - started < SERVE_AGAIN_TIMEOUT_SECONDS:
            try:
                read = read or http.get(f"/v1/accounts/{probe['from']}/balance").is_success
                # The same id every try: a retry never pays twice.
                wrote = wrote or http.post("/v1/transfers", json=probe).is_success
            except httpx.HTTPError:
                pass
            if read and wrote:
                return time.monotonic() - started
            time.sleep(0.05)
    raise RuntimeError(f"not serving {SERVE_AGAIN_TIMEOUT_SECONDS:.0f} s after the restart")


def retry_transfers(url: str, bodies: list[Body]) -> list[Body]:
    """POST each transfer again with its id; all must answer 200 (it had committed) or 201."""
    with httpx.Client(base_url=url, timeout=30) as http:

        def retry(body: Body) -> Body:
            response = http.post("/v1/transfers", json=body)
            if response.status_code not in (200, 201):
                raise RuntimeError(f"retry of {body['id']}: {response.status_code} {response.text}")
            return body

        with ThreadPoolExecutor(RETRY_THREADS) as pool:
            return list(pool.map(retry, bodies))


def progress_line(sample: dict[str, Any], http_errors: int) -> str:
    rss, disk = sample["rss_mib"], sample["disk_mib"]
    return (
        f"{sample['elapsed_s']:>7.0f} s {sample['committed']:>11,} transfers "
        f"{sample['throughput'] or 0:>7,.0f}/s  p99 {sample['p99_ms'] or 0:>6,.0f} ms  "
        f"RSS {sum(rss.values()):>7,.0f} MiB (max {max(rss.values(), default=0):,.0f})  "
        f"disk {sum(disk.values()):>7,.0f} MiB  http errors {http_errors}"
    )


def audit_balances(url: str, names: list[str], expected: Counter[str]) -> dict[str, Any]:
    """Sum of balances zero, and every balance as the acknowledged transfers make it."""
    off: dict[str, tuple[int | None, int]] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        sums = http.get("/v1/ledger/summary").json()["currencies"]
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            found = http.post("/v1/balances/lookup", json={"account_ids": chunk}).json()
            for item in found["balances"]:
                want = expected[item["account_id"]]
                if item.get("balance") != want:
                    off[item["account_id"]] = (item.get("balance"), want)
    return {
        "sum_zero": all(s["sum_of_balances"] == 0 for s in sums.values()),
        "balances_checked": len(names),
        "balances_off": len(off),
        "off_examples": dict(list(off.items())[:5]),
    }


def history_probe(url: str, account: str) -> dict[str, Any]:
    """Walk the hot account's history by cursor, then time pages at random depths."""
    path = f"/v1/accounts/{account}/transfers"
    cursors: list[str | None] = [None]
    entries, errors, timings, depths = 0, 0, [], []
    with httpx.Client(base_url=url, timeout=30) as http:
        walk_started = time.monotonic()
        while True:
            query: dict[str, Any] = {"limit": HISTORY_WALK_PAGE}
            if cursors[-1] is not None:
                query["cursor"] = cursors[-1]
            page = http.get(path, params=query).raise_for_status().json()
            entries += len(page["items"])
            if page["next_cursor"] is None:
                break
            cursors.append(page["next_cursor"])
        walked = time.monotonic() - walk_started
        rng = random.Random(11)
        for _ in range(HISTORY_PROBES):
            index = rng.randrange(len(cursors))
            query = {"limit": HISTORY_PAGE}
            if cursors[index] is not None:
                query["cursor"] = cursors[index]
            started = time.perf_counter()
            response = http.get(path, params=query)
            timings.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200
            depths.append(index * HISTORY_WALK_PAGE)
    return {
        "page": HISTORY_PAGE, "entries": entries, "walk_s": walked,
        "p50_ms": percentile(timings, 0.5),
        "p99_ms": percentile(timings, 0.99),
        "depth_min": min(depths), "depth_max": max(depths), "errors": errors,
    }  # fmt: skip


def replay_check(url: str, kept: list[tuple[Body, Body]]) -> dict[str, Any]:
    """Each transfer again, same id and body: 200 and the body first answered."""
    ok, failures = 0, []
    with httpx.Client(base_url=url, timeout=30) as http:
        for body, original in kept:
            response = http.post("/v1/transfers", json=body)
            if response.status_code == 200 and response.json() == original:
                ok += 1
            else:
                failures.append({"id": body["id"], "status": response.status_code})
    return {"checked": len(kept), "ok": ok, "failures": failures[:5]}


def p99_ms(seconds: list[float]) -> float | None:
    """p99 in ms of the batched calls of a sample; None (JSON null) if there were none."""
    return percentile(seconds, 0.99) * 1000 if seconds else None


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool


def percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def window_rate(timeline: list[tuple[int, float, int]], low: float, high: float) -> float:
    """Transfers/s while the count went from ``low`` to ``high``, restarts left out
    (time is summed only between points of the same server lifetime)."""
    count = seconds = 0.0
    for (phase, t0, c0), (next_phase, t1, c1) in itertools.pairwise(timeline):
        if phase == next_phase and c0 >= low and c1 <= high:
            count += c1 - c0
            seconds += t1 - t0
    return count / seconds if seconds else math.nan


def rss_growth(samples: list[dict[str, Any]], kill_at: list[int]) -> dict[str, float]:
    """MiB per million transfers per process, between the samples taken just before the
    first and the last kill."""
    marked = {s["before_kill"]: s for s in samples if s.get("before_kill")}
    first, last = marked.get(kill_at[0]), marked.get(kill_at[-1])
    if first is None or last is None or last["committed"] <= first["committed"]:
        return {}
    millions = (last["committed"] - first["committed"]) / 1e6
    return {
        name: (last["rss_mib"][name] - mib) / millions
        for name, mib in first["rss_mib"].items()
        if name in last["rss_mib"]
    }


def throughput_windows(
    timeline: list[tuple[int, float, int]], transfers: int
) -> tuple[float, float]:
    start = WARM_UP_SHARE * transfers
    first = window_rate(timeline, start, start + WINDOW_SHARE * transfers)
    last = window_rate(timeline, (1 - WINDOW_SHARE) * transfers, math.inf)
    return first, last


def evaluate(run: dict[str, Any], samples: list[dict[str, Any]]) -> list[Verdict]:
    """One verdict per target of issue 10's "What it must show"."""
    kill_at, transfers = run["kill_at"], run["transfers"]
    growth = rss_growth(samples, kill_at)
    worst = max(growth.values(), default=math.nan)
    first, last = throughput_windows(run["timeline"], transfers)
    per_transfer = run["disk_bytes_per_transfer_per_copy"]
    restarts = run["restarts"]
    recovery_first, recovery_last = restarts[0]["serving_s"], restarts[-1]["serving_s"]
    history, replay = run["history"], run["replay"]
    audits_ok = all(r["sum_zero"] and r["balances_off"] == 0 for r in restarts)
    return [
        Verdict(
            f"RSS growth {kill_at[0]:,}->{kill_at[-1]:,} <= {RSS_GROWTH_MIB_PER_MILLION:.0f} MiB/M per process",
            f"worst {worst:,.0f} MiB/M ("
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(growth.items()))
            + ")",
            worst <= RSS_GROWTH_MIB_PER_MILLION,
        ),
        Verdict(
            f"throughput last 10% >= {THROUGHPUT_KEPT}x first 10% after warm-up",
            f"{last:,.0f}/s vs {first:,.0f}/s = {last / first:.2f}x",
            last >= THROUGHPUT_KEPT * first,
        ),
        Verdict(
            f"disk <= {DISK_BYTES_PER_TRANSFER:.0f} B per transfer per copy",
            f"{per_transfer:,.0f} B",
            per_transfer <= DISK_BYTES_PER_TRANSFER,
        ),
        Verdict(
            f"recovery at {kill_at[-1]:,} < {RECOVERY_SECONDS:.0f} s and <= {RECOVERY_GROWTH}x at {kill_at[0]:,}",
            f"{recovery_last:.1f} s vs {recovery_first:.1f} s",
            recovery_last < RECOVERY_SECONDS and recovery_last <= RECOVERY_GROWTH * recovery_first,
        ),
        Verdict(
            f"history page ({history['page']} items) p99 < {HISTORY_P99_MS:.0f} ms through HTTP",
            f"p50 {history['p50_ms']:.1f} ms, p99 {history['p99_ms']:.1f} ms, depth "
            f"{history['depth_min']:,}..{history['depth_max']:,} of {history['entries']:,} entries",
            history["p99_ms"] < HISTORY_P99_MS and history["errors"] == 0,
        ),
        Verdict(
            "replay of first-minute ids: 200 and the original body",
            f"{replay['ok']}/{replay['checked']}",
            replay["checked"] > 0 and replay["ok"] == replay["checked"],
        ),
        Verdict(
            "after every restart: sum of balances 0, every balance as acknowledged",
            "; ".join(
                f"{r['at']:,}: off {r['balances_off']}, sum 0 {r['sum_zero']}" for r in restarts
            ),
            audits_ok,
        ),
    ]


def verdicts_json(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    return [asdict(v) for v in verdicts]


def write_plot(run: dict[str, Any], samples: list[dict[str, Any]], path: Path) -> None:
    """Three panels against transfers committed (millions), targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["committed"] / 1e6 for s in samples]
    fig, (rss, disk, rate) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    for name in sorted({n for s in samples for n in s["rss_mib"]}):
        points = [
            (xi, s["rss_mib"][name])
            for xi, s in zip(x, samples, strict=True)
            if name in s["rss_mib"]
        ]
        rss.plot(*zip(*points, strict=True), marker=".", label=name)
    marked = [s for s in samples if s.get("before_kill") == run["kill_at"][0]]
    if marked:
        start = marked[0]["committed"] / 1e6
        base = max(marked[0]["rss_mib"].values(), default=0.0)
        end = run["kill_at"][-1] / 1e6
        growth = base + RSS_GROWTH_MIB_PER_MILLION * (end - start)
        rss.plot([start, end], [base, growth], "k--", label="target: +32 MiB per million")
    rss.set_ylabel("RSS (MiB)")
    rss.set_title("shard and coordinator processes (restarts at the kill points)")
    for name in sorted({n for s in samples for n in s["disk_mib"]}):
        disk.plot(x, [s["disk_mib"].get(name, math.nan) for s in samples], marker=".", label=name)
    budget = [s["committed"] * DISK_BYTES_PER_TRANSFER * COPIES / MIB for s in samples]
    disk.plot(x, [sum(s["disk_mib"].values()) for s in samples], "k-", label="all replicas")
    disk.plot(x, budget, "k--", label="target: 300 B per transfer per copy")
    disk.set_ylabel("disk (MiB)")
    loaded = [(xi, s["throughput"]) for xi, s in zip(x, samples, strict=True) if s["throughput"]]
    rate.plot(*zip(*loaded, strict=True), marker=".", label="transfers/s")
    first, _ = throughput_windows(run["timeline"], run["transfers"])
    if not math.isnan(first):
        end = run["transfers"] / 1e6
        floor = THROUGHPUT_KEPT * first
        rate.plot([0.9 * end, end], [floor, floor], "k--", label="target: 0.9x first 10%")
    rate.set_ylabel("throughput (transfers/s)")
    rate.set_xlabel("transfers committed (millions)")
    for axis in (rss, disk, rate):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
