"""A drill's report: what the audit and the outage maths found, the verdict, and how
``tokpay drill`` shows one report and a summary of several."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tokpay.testing.audit import AuditFindings
from tokpay.testing.history_check import HistoryCheck
from tokpay.testing.outage import Rates

RESUME_WAIT_SECONDS = 60.0
"""How long the load waits for writes to resume before the drill counts it a failure."""
SHOWN_VIOLATIONS = 10
"""History violations printed with their operations (the report's JSON has more)."""


@dataclass
class DrillReport:
    """One drill's findings; ``judge()`` turns them into violations (none: it passed)."""

    target: str
    """What the drill meant to kill: primary, backup, coordinator, gateway or head."""
    victim: str
    """What it killed, e.g. ``node n1 (session 1234)``."""
    audit: AuditFindings | None = None
    """The ledger audit after the load (None until it ran)."""
    acknowledged: int = 0
    unsettled: int = 0
    """Transfers that never got a definitive answer, even retried (must be 0)."""
    backwards_reads: int = 0
    """Reads lower than a read that completed before they started (must be 0)."""
    write_resume_seconds: float | None = None
    """From the kill until every route took a write again (None: never)."""
    write_outage_seconds: float | None = None
    """The longest time any route went without an acknowledged write after the kill."""
    route_outages: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The same per route (``shard-N``, ``2pc``): (seconds, when it began after the kill)."""
    victim_routes: list[str] = field(default_factory=list)
    """Routes with a copy on the node killed (its shard's primary or backup; ``2pc`` when
    the coordinator or any shard had one): the others should not notice the kill."""
    rates: dict[str, Rates] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Retried errors by kind (status code or exception name)."""
    violations: list[str] = field(default_factory=list)
    resume_limit_seconds: float = RESUME_WAIT_SECONDS
    """Writes must resume within this after the kill (longer when the drill restarts
    the whole cluster)."""
    restart_seconds: float | None = None
    """From `cluster up` (or `cluster recover`) until the ledger served again, when the
    drill restarted the cluster."""
    history: HistoryCheck | None = None
    """The history checker's findings over what the clients saw (None until it ran)."""
    history_path: str | None = None
    """The clients' history file, when kept (a failed drill, or asked to)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def lost(self) -> int:
        """Acknowledged transfers the ledger does not hold (must be 0)."""
        return 0 if self.audit is None else len(self.audit.lost)

    @property
    def doubled(self) -> int:
        """Transfers listed twice plus balances that differ from a replay (must be 0)."""
        if self.audit is None:
            return 0
        return self.audit.listed_twice + len(self.audit.balances_off)

    @property
    def sum_of_balances(self) -> int | None:
        return None if self.audit is None else self.audit.sum_of_balances

    def judge(self) -> None:
        """Record every violation: the drill passes only with none."""
        if self.lost:
            self.violations.append(f"{self.lost} acknowledged transfers lost")
        if self.doubled:
            self.violations.append(f"{self.doubled} transfers applied twice / balances off")
        if self.sum_of_balances != 0:
            self.violations.append(f"sum of balances is {self.sum_of_balances}, not 0")
        if self.backwards_reads:
            self.violations.append(f"{self.backwards_reads} reads went backwards")
        if self.unsettled:
            self.violations.append(f"{self.unsettled} transfers never got an answer")
        if self.write_resume_seconds is None:
            self.violations.append("writes never succeeded again after the kill")
        elif (
            self.write_outage_seconds is not None
            and self.write_outage_seconds >= self.resume_limit_seconds
        ):
            self.violations.append(f"writes stopped for {self.write_outage_seconds:.0f} s")
        if self.acknowledged == 0:
            self.violations.append("no transfer was acknowledged")
        if self.history is None:
            self.violations.append("the clients' history was not checked")
        else:
            self.violations.extend(self.history.summary())

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: its fields, the audit's tallies, its verdict."""
        out: dict[str, Any] = asdict(self)
        out |= {"lost": self.lost, "doubled": self.doubled, "sum_of_balances": self.sum_of_balances}
        out["ok"] = self.ok
        return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(console: Console, report: DrillReport) -> None:
    table = Table(show_header=False, title=f"Drill: {report.target} → killed {report.victim}")
    table.add_row("acknowledged transfers", str(report.acknowledged))
    table.add_row("lost (must be 0)", str(report.lost))
    table.add_row("applied twice / balance off (must be 0)", str(report.doubled))
    table.add_row("sum of balances (must be 0)", str(report.sum_of_balances))
    table.add_row("reads went backwards (must be 0)", str(report.backwards_reads))
    resume, outage = report.write_resume_seconds, report.write_outage_seconds
    table.add_row(
        "writes succeeded again after (first ack per shard)",
        "never" if resume is None else f"{resume:.2f} s",
    )
    table.add_row(
        "longest write outage after the kill (any shard)",
        "-" if outage is None else f"{outage:.2f} s",
    )
    if report.route_outages:
        table.add_row(
            "longest write outage per route (* a copy on the node killed; when it began)",
            ", ".join(
                f"{route}{'*' if route in report.victim_routes else ''} {seconds:.2f} s "
                f"(from +{began:.1f} s)"
                for route, (seconds, began) in report.route_outages.items()
            ),
        )
    if report.restart_seconds is not None:
        table.add_row("from `cluster up` to serving", f"{report.restart_seconds:.1f} s")
    for phase, rates in report.rates.items():
        table.add_row(f"{phase}: reads/s, writes/s", f"{rates.reads:.0f}, {rates.writes:.0f}")
    table.add_row(
        "retried errors", ", ".join(f"{k}: {v}" for k, v in report.errors.items()) or "none"
    )
    if report.history is not None:
        _history_rows(table, report.history)
    table.add_row(
        "verdict",
        "[green]PASS[/green]" if report.ok else f"[red]FAIL: {'; '.join(report.violations)}[/red]",
    )
    console.print(table)
    if report.history is not None:
        for violation in report.history.examples[:SHOWN_VIOLATIONS]:
            console.print(f"[red]{violation.rule}[/red]: {violation.detail}")
            for op in violation.ops:
                console.print(f"    {op}")
    if report.history_path is not None:
        console.print(f"history kept: {report.history_path}")


def _history_rows(table: Table, check: HistoryCheck) -> None:
    table.add_row("history: operations, reads checked", f"{check.operations}, {check.reads}")
    table.add_row("history: acknowledged, refused", f"{check.acknowledged}, {check.refused}")
    table.add_row(
        "history: unknown outcomes, resolved (must match)",
        f"{check.unknown}, {check.unknown_resolved}",
    )
    table.add_row("history: stale reads (must be 0)", str(check.stale_reads))
    table.add_row("history: non-linearizable reads (must be 0)", str(check.nonlinearizable_reads))


def print_summary(console: Console, reports: list[DrillReport]) -> None:
    """One row per drill, and the median and worst resume and outage times."""
    if len(reports) < 2:
        return
    table = Table(title=f"{len(reports)} drills")
    columns = ("#", "target", "acked", "lost", "doubled", "sum", "backwards", "stale", "nonlin")
    for column in (*columns, "resume s", "outage s", "ok"):
        table.add_column(column)
    for index, r in enumerate(reports, 1):
        table.add_row(
            str(index), r.target, str(r.acknowledged), str(r.lost), str(r.doubled),
            str(r.sum_of_balances), str(r.backwards_reads),
            "-" if r.history is None else str(r.history.stale_reads),
            "-" if r.history is None else str(r.history.nonlinearizable_reads),
            _seconds(r.write_resume_seconds), _seconds(r.write_outage_seconds),
            "PASS" if r.ok else "FAIL",
        )  # fmt: skip
    console.print(table)
    resumes = sorted(r.write_resume_seconds for r in reports if r.write_resume_seconds is not None)
    outages = sorted(r.write_outage_seconds for r in reports if r.write_outage_seconds is not None)
    if resumes and outages:
        console.print(
            f"passed {sum(r.ok for r in reports)}/{len(reports)}; write resume: median "
            f"{resumes[len(resumes) // 2]:.2f} s, max {resumes[-1]:.2f} s; longest outage: "
            f"median {outages[len(outages) // 2]:.2f} s, max {outages[-1]:.2f} s"
        )
