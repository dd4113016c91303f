"""The history checker on hand-built histories: ones that must fail (each rule broken
once) and ones that must pass (what concurrency allows); the history file itself; and a
drill's verdict, report and file on a violation."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tokpay.testing import history
from tokpay.testing.audit import AuditFindings
from tokpay.testing.drill import HistoryOptions
from tokpay.testing.history_check import HistoryCheck, check_history
from tokpay.testing.report import DrillReport, print_report

SECOND = 10**9


def _at(seconds: float) -> history.Stamp:
    return history.Stamp(int(seconds * SECOND), 1_700_000_000 * SECOND + int(seconds * SECOND))


class Built:
    """A history and the ledger's account histories, built side by side."""

    def __init__(self) -> None:
        self.records: list[history.Record] = []
        self.ledger: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.balances: dict[str, int] = defaultdict(int)

    def transfer(
        self,
        transfer_id: str,
        legs: dict[str, int],
        span: tuple[float, float],
        outcome: history.Outcome = "ok",
        payer: str = "p",
    ) -> history.TransferOp:
        op = history.TransferOp(
            client="w0",
            invoked=_at(span[0]),
            completed=_at(span[1]),
            id=transfer_id,
            payer=payer,
            legs=tuple(history.Leg(a, n) for a, n in legs.items()),
            outcome=outcome,
            code="" if outcome == "ok" else "503",
        )
        self.records.append(op)
        return op

    def commit(self, op: history.TransferOp) -> None:
        """The ledger applies ``op``: one entry in the payer's and each leg's history."""
        body = op.body()
        effects = {op.payer: -sum(leg.amount for leg in op.legs)}
        effects |= {leg.account: leg.amount for leg in op.legs}
        for account, effect in effects.items():
            self.balances[account] += effect
            entry = body | {"id": op.id, "kind": "payment", "effect": effect}
            self.ledger[account].append(entry | {"balance_after": self.balances[account]})

    def read(self, account: str, value: int | None, span: tuple[float, float]) -> None:
        self.records.append(
            history.ReadOp(client="r0", invoked=_at(span[0]), completed=_at(span[1]), account=account,
                   value=value)
        )  # fmt: skip

    def check(self) -> HistoryCheck:
        return check_history(self.records, self.ledger)


def _two_credits(spans: tuple[tuple[float, float], ...] = ((1, 2), (3, 4))) -> Built:
    """``a`` receives 10 (t1) then 5 (t2), by default acked at 2 and 4: balances 0, 10, 15."""
    built = Built()
    for n, (amount, span) in enumerate(zip((10, 5), spans, strict=True), 1):
        built.commit(built.transfer(f"t{n}", {"a": amount}, span))
    return built


def _rules(check: HistoryCheck) -> list[str]:
    return [violation.rule for violation in check.examples]


def test_a_value_no_prefix_gives_fails() -> None:
    built = _two_credits()
    built.read("a", 12, (5, 6))
    check = built.check()
    assert not check.ok and check.nonlinearizable_reads == 1
    assert _rules(check) == ["not linearizable"]
    assert "read a = 12" in check.examples[0].ops[0]


def test_a_read_going_back_in_time_fails() -> None:
    built = _two_credits(((1, 9), (1, 9)))
    built.read("a", 15, (2, 3))
    built.read("a", 10, (4, 5))  # began after the first read ended, saw less
    check = built.check()
    assert check.nonlinearizable_reads == 1 and check.stale_reads == 0
    (violation,) = check.examples
    assert "went back" in violation.detail
    assert "read a = 10" in violation.ops[0] and "read a = 15" in violation.ops[1]


def test_a_stale_read_after_an_acknowledged_write_fails() -> None:
    built = _two_credits()
    built.read("a", 10, (5, 6))  # t2 was acknowledged at 4
    check = built.check()
    assert check.stale_reads == 1 and check.nonlinearizable_reads == 0 and not check.ok
    (violation,) = check.examples
    assert violation.rule == "stale read" and "transfer t2" in violation.ops[1]


def test_an_acknowledged_transfer_missing_fails() -> None:
    built = _two_credits()
    built.transfer("t3", {"a": 7}, (5, 6))  # acknowledged, never committed
    check = built.check()
    assert check.lost == 1 and not check.ok
    assert _rules(check) == ["lost"] and "t3" in check.examples[0].detail


def test_a_transfer_held_with_other_legs_fails() -> None:
    built = Built()
    sent = built.transfer("t1", {"a": 10}, (1, 2))
    built.commit(
        history.TransferOp(**{**_fields(sent), "legs": (history.Leg("a", 11),), "client": "x"})
    )
    check = built.check()
    assert check.lost == 1 and _rules(check) == ["altered"]


def test_a_refused_transfer_the_ledger_holds_fails() -> None:
    built = Built()
    refused = built.transfer("t1", {"a": 10}, (1, 2), outcome="refused")
    built.commit(refused)
    check = built.check()
    assert check.refused == 1 and check.refused_held == 1 and not check.ok


def test_an_unknown_outcome_without_resolution_fails() -> None:
    built = Built()
    built.transfer("t1", {"a": 10}, (1, 2), outcome="unknown")
    check = built.check()
    assert check.unknown == 1 and check.unresolved == 1 and check.unknown_resolved == 0
    assert not check.ok


def test_a_resolution_the_ledger_contradicts_fails() -> None:
    built = Built()
    unknown = built.transfer("t1", {"a": 10}, (1, 2), outcome="unknown")
    built.commit(unknown)
    built.records.append(history.Resolution("t1", committed=False, at=_at(9)))
    check = built.check()
    assert check.unresolved == 1 and _rules(check) == ["resolution wrong"]


def test_a_read_of_a_transfer_invoked_after_it_ended_fails() -> None:
    built = _two_credits()
    later = built.transfer("t3", {"a": 1}, (8, 9))
    built.commit(later)
    built.read("a", 16, (5, 6))
    check = built.check()
    assert check.nonlinearizable_reads == 1
    assert "invoked after" in check.examples[0].detail and "t3" in check.examples[0].ops[1]


def test_reads_overlapping_a_write_may_see_either_side() -> None:
    built = Built()
    t1 = built.transfer("t1", {"a": 10}, (1, 10))
    built.commit(t1)
    built.read("a", 10, (2, 3))
    built.read("a", 0, (2.5, 4))  # overlaps the read that saw t1: may come before it
    built.read("a", 0, (1.5, 5))
    built.read("a", 10, (11, 12))
    check = built.check()
    assert check.ok, check.examples
    assert (check.reads, check.acknowledged, check.operations) == (4, 1, 5)


def test_a_value_several_prefixes_give_takes_one_that_fits() -> None:
    built = Built()
    # "a" goes 0, 10, 0, 20, 10, 40; t4 and t5 are in flight through every read.
    built.commit(built.transfer("t1", {"a": 10}, (1, 1.5)))
    built.commit(built.transfer("t2", {"p": 10}, (2, 2.5), payer="a"))
    built.commit(built.transfer("t3", {"a": 20}, (3, 3.5)))
    built.commit(built.transfer("t4", {"x": 10}, (1, 20), payer="a"))
    built.commit(built.transfer("t5", {"a": 30}, (1, 20)))
    built.read("a", 10, (4, 4.5))  # after t3's ack: only the prefix up to t4 gives 10
    built.read("a", 10, (5, 6))
    built.read("a", 40, (5.5, 7))
    assert built.check().ok, built.check().examples
    built.read("a", 20, (8, 9))  # after a read that saw t4: back before it
    check = built.check()
    assert check.nonlinearizable_reads == 1 and "went back" in check.examples[0].detail
    built.records[-1] = history.ReadOp("r0", _at(8), _at(9), account="a", value=40)
    assert built.check().ok


def test_unknown_outcomes_resolved_by_a_retry_or_the_ledger_pass() -> None:
    built = Built()
    built.transfer("t1", {"a": 10}, (1, 2), outcome="unknown")
    built.commit(built.transfer("t1", {"a": 10}, (3, 4)))
    built.commit(built.transfer("t2", {"a": 5}, (5, 6), outcome="unknown"))
    built.records.append(history.Resolution("t2", committed=True, at=_at(9)))
    built.transfer("t3", {"a": 5}, (5, 6), outcome="unknown")
    built.records.append(history.Resolution("t3", committed=False, at=_at(9)))
    built.read("a", 10, (4.5, 4.6))
    check = built.check()
    assert check.ok, check.examples
    assert (check.unknown, check.unknown_resolved, check.acknowledged) == (3, 3, 1)


def test_the_file_round_trips_and_its_cap_stops_it(tmp_path: Path) -> None:
    built = _two_credits()
    built.read("a", 15, (5, 6))
    built.read("a", None, (5, 6))
    built.records.append(history.Resolution("t9", committed=False, at=_at(9)))
    path = tmp_path / "history.jsonl"
    writer = history.HistoryWriter(path)
    for record in built.records:
        writer.append(record)
    writer.close()
    assert list(history.read_history(path)) == built.records
    assert path.read_text().count("\n") == len(built.records) == writer.records
    capped = history.HistoryWriter(tmp_path / "capped.jsonl", cap_bytes=500)
    with pytest.raises(history.HistoryFull, match="cap of 500 bytes"):
        for record in built.records * 10:
            capped.append(record)
    capped.close()
    assert 0 < (tmp_path / "capped.jsonl").stat().st_size <= 500


def _fields(op: history.TransferOp) -> dict[str, Any]:
    return {name: getattr(op, name) for name in op.__struct_fields__}


def test_a_drill_fails_on_a_history_violation_and_keeps_its_file(tmp_path: Path) -> None:
    built = _two_credits()
    built.read("a", 10, (5, 6))
    report = DrillReport(target="primary", victim="n1", acknowledged=2, write_resume_seconds=1.0)
    report.audit = AuditFindings([], 0, [], {}, [], 0)
    report.history = built.check()
    report.judge()
    assert report.violations == ["history: 1 stale reads (older than an acknowledged write)"]
    options = HistoryOptions(tmp_path / "histories")
    kept, deleted = options.file(), options.file()
    report.history_path = options.keep_or_delete(kept, report.ok)
    assert report.history_path == str(kept) and kept.exists()
    assert options.keep_or_delete(deleted, passed=True) is None and not deleted.exists()
    console = Console(record=True, width=200)
    print_report(console, report)
    shown = console.export_text()
    assert "stale reads (must be 0)" in shown and "read a = 10 by r0" in shown
    assert f"history kept: {kept}" in shown
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["history"]["stale_reads"] == 1 and as_json["ok"] is False
