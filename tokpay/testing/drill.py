"""Failover drills: load through the gateway, SIGKILL one part of the cluster, audit.

A drill opens fresh accounts and runs transfers and balance reads through the HTTP
gateway (tokpay.testing.workload), kills a target with SIGKILL (tokpay.testing.nemesis),
keeps the load going, restarts what a supervisor would, and then audits the ledger
with its own answers (tokpay.testing.audit), checks what the clients saw against the
ledger's order (tokpay.testing.history_check) and reports how long writes stopped
(tokpay.testing.outage) in a DrillReport (tokpay.testing.report). The clients' history
file is deleted after a drill that passed (unless kept), left for one that failed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokpay.cluster.local import LocalCluster
from tokpay.testing import outage
from tokpay.testing.audit import audit_ledger, read_histories
from tokpay.testing.history import HISTORY_CAP_BYTES, HistoryWriter, read_history
from tokpay.testing.history_check import check_history
from tokpay.testing.nemesis import (
    HEAD_RESTART_DELAY_SECONDS,
    choose_victim,
    cluster_status_subprocess,
    kill_and_recover,
    wait_cluster_healthy,
)
from tokpay.testing.partition import PARTITION_TARGETS, partition_kill, require_netns
from tokpay.testing.powercut import (
    RESTART_RESUME_WAIT_SECONDS,
    RESTART_TARGETS,
    choose_pair,
    restart_kill,
)
from tokpay.testing.report import RESUME_WAIT_SECONDS, DrillReport
from tokpay.testing.workload import DrillLoad

AFTER_RESUME_SECONDS = 4.0
ROUTE_STALL_SECONDS = 2.0
"""A route with no acknowledged write for this long counts as stalled: the load goes on."""
PROGRESS_SECONDS = 0.25

Progress = Callable[[str, DrillLoad], None]


@dataclass(frozen=True)
class HistoryOptions:
    """Where a drill writes its clients' history, its cap, and whether a passing drill
    keeps it (a failing one always does)."""

    directory: Path | None = None
    """None: the system's temporary directory."""
    cap_bytes: int = HISTORY_CAP_BYTES
    keep: bool = False

    def file(self) -> Path:
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        descriptor, name = tempfile.mkstemp(
            prefix=f"drill-{stamp}-", suffix=".jsonl", dir=self.directory
        )
        os.close(descriptor)
        return Path(name)

    def keep_or_delete(self, path: Path, passed: bool) -> str | None:
        """The path if the history stays, None once deleted."""
        if passed and not self.keep:
            path.unlink()
            return None
        return str(path)


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
    resume_wait: float = RESUME_WAIT_SECONDS,
    history: HistoryOptions | None = None,
) -> DrillReport:
    """One drill: load, kill (``kill`` returns what it killed), keep loading, audit,
    check the clients' history.

    ``recover`` runs after the load ends (restart what a supervisor would).
    """
    history = history or HistoryOptions()
    writer = HistoryWriter(history.file(), history.cap_bytes)
    load = DrillLoad(base_url, shard_count, headers or {}, writer)
    show: Progress = progress or (lambda phase, _: None)
    show("opening accounts", load)
    await load.open_accounts()
    tasks = load.start()
    started = time.monotonic()
    while time.monotonic() - started < before_seconds and not load.history_full:
        show("load before the kill", load)
        await asyncio.sleep(PROGRESS_SECONDS)
    killed_at = time.monotonic()
    victim = await asyncio.to_thread(kill)
    report = DrillReport(target=target, victim=victim, resume_limit_seconds=resume_wait)
    await _load_until_resumed(load, killed_at, after_seconds, resume_wait, victim, show)
    load.stop()
    show("stopping the load", load)
    await asyncio.gather(*tasks)
    ended = time.monotonic()
    show("restarting what was killed", load)
    await asyncio.to_thread(recover)
    await _settle_and_check(load, writer, report, show)
    report.acknowledged = len(load.acked)
    report.backwards_reads = load.backwards
    report.errors = dict(load.errors)
    report.write_resume_seconds = outage.resume_seconds(load.acks, killed_at)
    report.write_outage_seconds = outage.outage_seconds(load.acks, killed_at, ended)
    report.route_outages = outage.route_outages(load.acks, killed_at, ended)
    resumed_at = killed_at + (report.write_resume_seconds or 0.0)
    report.rates = outage.phase_rates(
        load.reads,
        load.writes,
        {
            "before": (started, killed_at),
            "during": (killed_at, resumed_at),
            "after": (resumed_at, ended),
        },
    )
    report.judge()
    report.history_path = history.keep_or_delete(writer.path, report.ok)
    return report


async def _settle_and_check(
    load: DrillLoad, writer: HistoryWriter, report: DrillReport, show: Progress
) -> None:
    """Settle what is unanswered (retry, then look up), audit the ledger, check the
    history against the accounts' histories the audit read."""
    show("settling unanswered transfers", load)
    unsettled = await load.settle()
    report.unsettled = len(unsettled)
    await load.resolve(unsettled)
    writer.close()
    if load.history_full is not None:
        raise load.history_full
    show("auditing and checking the history", load)
    async with load.client() as http:
        histories = await read_histories(http, load.accounts)
        report.audit = await audit_ledger(http, load.accounts, load.acked, histories)
    report.history = check_history(read_history(writer.path), histories)


async def _load_until_resumed(
    load: DrillLoad,
    killed_at: float,
    after_seconds: float,
    resume_wait: float,
    victim: str,
    show: Progress,
) -> None:
    """At least ``after_seconds``; longer while writes have not resumed everywhere (up to
    ``resume_wait``), then AFTER_RESUME_SECONDS more of steady load."""
    while load.history_full is None:
        now = time.monotonic()
        elapsed = now - killed_at
        resumed = outage.resume_seconds(load.acks, killed_at)
        if elapsed >= resume_wait:
            return
        settled = resumed is not None and not outage.stalled(load.acks, now, ROUTE_STALL_SECONDS)
        if settled and elapsed >= max(after_seconds, (resumed or 0.0) + AFTER_RESUME_SECONDS):
            return
        state = "writes resumed" if resumed is not None else "waiting for writes to resume"
        show(f"killed {victim}; load continues ({state})", load)
        await asyncio.sleep(PROGRESS_SECONDS)


def drill_cluster(
    cluster: LocalCluster,
    target: str,
    *,
    before_seconds: float,
    after_seconds: float,
    progress: Progress | None = None,
    history: HistoryOptions | None = None,
    head_down: float = HEAD_RESTART_DELAY_SECONDS,
) -> DrillReport:
    """One drill on a running local cluster: wait until it is healthy, choose a victim
    for ``target``, and run the drill against its gateway. A head that is killed stays
    down ``head_down`` seconds before it is started again (the load goes on meanwhile)."""
    data_dir = cluster.data_dir
    url = f"http://127.0.0.1:{int(cluster.settings['port'])}"
    wait_cluster_healthy(data_dir)
    status = cluster_status_subprocess(data_dir)
    timings: dict[str, float] = {}
    resume_wait = RESUME_WAIT_SECONDS
    victim_node: str | None = None
    if target in RESTART_TARGETS:
        nodes = choose_pair(status)[1] if target == "pair" else []
        kill, recover = restart_kill(cluster, target, nodes, timings), lambda: None
        resume_wait = RESTART_RESUME_WAIT_SECONDS
    elif target in PARTITION_TARGETS:
        require_netns(cluster)
        kill, recover = partition_kill(cluster, target, status)
    else:
        kind, name = choose_victim(target, status)
        kill, recover = kill_and_recover(cluster, kind, name, head_down=head_down)
        if kind == "node":
            victim_node = name
            if cluster.nodes[name]["role"] == "head":
                after_seconds = max(after_seconds, head_down + AFTER_RESUME_SECONDS)
                resume_wait = max(resume_wait, head_down + RESUME_WAIT_SECONDS)
    report = asyncio.run(
        run_drill(
            url,
            int(cluster.settings["shards"]),
            target,
            kill,
            recover,
            before_seconds=before_seconds,
            after_seconds=after_seconds,
            progress=progress,
            resume_wait=resume_wait,
            history=history,
        )
    )
    report.restart_seconds = timings.get("restart")
    if victim_node is not None:
        report.victim_routes = routes_on_node(status, victim_node)
    return report


def routes_on_node(status: dict[str, Any], node: str) -> list[str]:
    """The drill's routes with a copy on ``node``, from ``cluster status --json``: each
    shard whose primary or backup is there, and ``2pc`` when any group has one."""
    routes = []
    for g in status["groups"]:
        copies = [g[role]["node"] for role in ("primary", "backup") if g.get(role)]
        if node in copies:
            routes.append("2pc" if g["group"] == "coordinator" else g["group"])
    if routes and "2pc" not in routes:
        routes.append("2pc")
    return sorted(routes)
