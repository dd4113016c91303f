"""What the controller knows of each replica's health: last heartbeat and last report.

A replica silent for ``DEAD_AFTER_SECONDS`` is lost (a backup its primary vouches for,
only after ``BACKUP_SILENT_SECONDS``). When the controller itself stalls
(GC, a slow GCS call), nobody's silence during the stall counts against them. (Leases
are not the controller's: a primary holds its lease from its backup.)
"""

from __future__ import annotations

import time

from tokpay.actors.protocol import HeartbeatReport
from tokpay.actors.timing import BACKUP_SILENT_SECONDS, DEAD_AFTER_SECONDS


class Liveness:
    def __init__(self) -> None:
        now = time.monotonic()
        self.started = now
        self.last_seen: dict[str, float] = {}
        self.reported: dict[str, float] = {}
        """When each replica last reported (``last_seen`` also holds creation grace)."""
        self.reports: dict[str, HeartbeatReport] = {}

    def heard(self, report: HeartbeatReport) -> None:
        now = time.monotonic()
        self.last_seen[report.name] = now
        self.reported[report.name] = now
        self.reports[report.name] = report

    def expect(self, name: str, within: float) -> None:
        """A replica being created: not counted lost for ``within`` seconds."""
        self.last_seen[name] = time.monotonic() + within

    def forget(self, name: str) -> None:
        """A replica that was ended: keep nothing of it (one entry per replica ever made
        would otherwise pile up over months of rebuilds)."""
        self.last_seen.pop(name, None)
        self.reported.pop(name, None)
        self.reports.pop(name, None)

    def silent(self, name: str) -> float:
        """How long ``name`` has not been heard from (its grace period counted as heard)."""
        return time.monotonic() - self.last_seen.get(name, self.started)

    def dead(self, name: str) -> bool:
        return self.silent(name) > DEAD_AFTER_SECONDS

    def backup_lost(self, backup: str, primary: str) -> bool:
        """Silent past DEAD_AFTER_SECONDS while its primary's last report shows trouble
        with it (replication broken, no lease granted), or silent past
        BACKUP_SILENT_SECONDS: a starved backup its primary still hears is kept."""
        silent = self.silent(backup)
        if silent <= DEAD_AFTER_SECONDS:
            return False
        report = self.reports.get(primary)
        vouched = report is not None and not report.broken and not report.leaseless
        return silent > BACKUP_SILENT_SECONDS or not vouched

    def forgive(self, stalled: float) -> None:
        """The controller stalled this long: extend every grace period by as much."""
        for name in self.last_seen:
            self.last_seen[name] += stalled
