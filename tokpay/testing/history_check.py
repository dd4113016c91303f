"""The history checker: what a drill's clients saw (tokpay.testing.history) against the
order the ledger gives each account's transfers.

The rules, each broken one a ``Violation`` naming the operations involved:

1. Every acknowledged transfer is held once, as sent (the audit's rule, reused:
   tokpay.testing.audit.held_transfers); no refused transfer is held.
2. Every transfer no attempt got an answer for has a resolution, and it agrees with
   the ledger.
3. Per account, a read's value is the balance after some prefix of the account's
   history (the ledger's order, with ``balance_after`` per entry; the empty prefix
   gives the opening balance), and the prefix it picks holds every transfer of the
   account acknowledged before the read was invoked (else the read is *stale*), is no
   shorter than the prefix of any read that completed before it was invoked, and holds
   no transfer first invoked after the read completed (else it is *not linearizable*).

Reads are taken in the order they were invoked, each picking the shortest prefix its
bounds allow: a shorter pick never narrows a later read's choice, so when that fails
no choice of prefixes could pass. Sorting and bisection keep it O(n log n).
"""

from __future__ import annotations

import bisect
import heapq
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokpay.testing.audit import Histories, held_transfers
from tokpay.testing.history import ReadOp, Record, Resolution, TransferOp

EXAMPLES_KEPT = 50
"""Violations kept with their operations; the counts cover all of them."""

_first = operator.itemgetter(0)


@dataclass
class Violation:
    rule: str
    """lost, listed twice, altered, refused but held, unresolved, resolution wrong,
    stale read or not linearizable."""
    detail: str
    ops: list[str] = field(default_factory=list)
    """The operations involved, described with their times since the history began."""


@dataclass
class HistoryCheck:
    """What the checker found; a clean history has every violation count at zero."""

    operations: int = 0
    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    """Transfers with at least one attempt that came back unknown."""
    unknown_resolved: int = 0
    """Of those, resolved by a later answer to the same id or by asking the ledger."""
    reads: int = 0
    """Successful reads checked against the ledger's order."""
    lost: int = 0
    """Acknowledged transfers not held, held twice in one account, or altered."""
    stale_reads: int = 0
    nonlinearizable_reads: int = 0
    unresolved: int = 0
    """Unknown transfers without a resolution, or whose resolution the ledger denies."""
    refused_held: int = 0
    examples: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.stale_reads
            or self.nonlinearizable_reads
            or self.unresolved
            or self.refused_held
        )

    def summary(self) -> list[str]:
        """One line per kind of violation found, for the drill's verdict."""
        counts = (
            (self.lost, "acknowledged transfers not held once as sent"),
            (self.refused_held, "refused transfers held by the ledger"),
            (self.unresolved, "unknown outcomes unresolved or resolved wrong"),
            (self.stale_reads, "stale reads (older than an acknowledged write)"),
            (self.nonlinearizable_reads, "reads no single order of the account explains"),
        )
        return [f"history: {n} {what}" for n, what in counts if n]

    def add(self, violation: Violation) -> None:
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(violation)


@dataclass
class _Transfer:
    """Every attempt of one transfer id, folded."""

    first: TransferOp
    acked: TransferOp | None = None
    refused: TransferOp | None = None
    unknown: int = 0


class _Clock:
    """Describes operations with their times since the history's first invocation."""

    def __init__(self, origin_ns: int) -> None:
        self.origin_ns = origin_ns

    def at(self, ns: int) -> str:
        return f"+{(ns - self.origin_ns) / 1e9:.3f}s"

    def describe(self, op: TransferOp | ReadOp) -> str:
        span = f"[{self.at(op.invoked.mono_ns)}, {self.at(op.completed.mono_ns)}]"
        if isinstance(op, ReadOp):
            return f"read {op.account} = {op.value} by {op.client} {span}"
        legs = ", ".join(f"{leg.account} +{leg.amount}" for leg in op.legs)
        answer = op.outcome + (f" {op.code}" if op.code else "")
        return f"transfer {op.id} {op.payer} -> {legs} by {op.client} {span}: {answer}"


def check_history(records: Iterable[Record], histories: Histories) -> HistoryCheck:
    """Check a history against the ledger's ``histories`` (every account the drill used,
    oldest entry first)."""
    check = HistoryCheck()
    transfers: dict[str, _Transfer] = {}
    reads: dict[str, list[ReadOp]] = defaultdict(list)
    resolutions: dict[str, Resolution] = {}
    origin: int | None = None
    for record in records:
        if isinstance(record, Resolution):
            resolutions[record.id] = record
            continue
        check.operations += 1
        if origin is None or record.invoked.mono_ns < origin:
            origin = record.invoked.mono_ns
        if isinstance(record, ReadOp):
            if record.value is not None:
                reads[record.account].append(record)
            continue
        folded = transfers.setdefault(record.id, _Transfer(record))
        if record.outcome == "ok" and folded.acked is None:
            folded.acked = record
        elif record.outcome == "refused":
            folded.refused = record
        elif record.outcome == "unknown":
            folded.unknown += 1
    clock = _Clock(origin or 0)
    held = {entry["id"] for entries in histories.values() for entry in entries}
    _check_transfers(check, transfers, histories, held, clock)
    _check_unknown(check, transfers, resolutions, held, clock)
    touching: dict[str, list[_Transfer]] = defaultdict(list)
    for folded in transfers.values():
        for account in folded.first.accounts:
            touching[account].append(folded)
    for account, entries in histories.items():
        _check_reads(check, account, entries, reads.get(account, []), touching[account], clock)
    return check


def _check_transfers(
    check: HistoryCheck,
    transfers: Mapping[str, _Transfer],
    histories: Histories,
    held: set[str],
    clock: _Clock,
) -> None:
    """Rule 1: acknowledged ones held once as sent (by the audit's rule), refused ones not."""
    acked = {i: t.acked for i, t in transfers.items() if t.acked is not None}
    check.acknowledged = len(acked)
    lost, listed_twice, altered = held_transfers(
        histories, {i: op.body() for i, op in acked.items()}
    )
    check.lost = len(lost) + listed_twice + len(altered)
    for rule, ids in (("lost", lost), ("altered", altered)):
        for i in ids:
            check.add(
                Violation(rule, f"acknowledged transfer {i} {rule}", [clock.describe(acked[i])])
            )
    if listed_twice:
        check.add(Violation("listed twice", f"{listed_twice} history entries repeat a transfer"))
    for i, folded in transfers.items():
        if folded.acked is None and folded.refused is not None:
            check.refused += 1
            if i in held:
                check.refused_held += 1
                what = f"refused transfer {i} is held by the ledger"
                check.add(Violation("refused but held", what, [clock.describe(folded.refused)]))


def _check_unknown(
    check: HistoryCheck,
    transfers: Mapping[str, _Transfer],
    resolutions: Mapping[str, Resolution],
    held: set[str],
    clock: _Clock,
) -> None:
    """Rule 2: each unknown outcome resolved, by a later answer or by the ledger."""
    for i, folded in transfers.items():
        if not folded.unknown:
            continue
        check.unknown += 1
        if folded.acked is not None or folded.refused is not None:
            check.unknown_resolved += 1
            continue
        resolution = resolutions.get(i)
        if resolution is None:
            check.unresolved += 1
            what = f"transfer {i}: no answer and no resolution"
            check.add(Violation("unresolved", what, [clock.describe(folded.first)]))
        elif resolution.committed != (i in held):
            check.unresolved += 1
            said = "committed" if resolution.committed else "not found"
            what = f"transfer {i}: the ledger said {said}, its histories say otherwise"
            check.add(Violation("resolution wrong", what, [clock.describe(folded.first)]))
        else:
            check.unknown_resolved += 1


class _AccountOrder:
    """One account's history in the ledger's order, with the bounds the drill's writes
    put on the prefix a read may pick (position k: the first k entries)."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], touching: list[_Transfer]) -> None:
        opening = entries[0]["balance_after"] - entries[0]["effect"] if entries else 0
        self.after = [opening, *(entry["balance_after"] for entry in entries)]
        self.positions: dict[int, list[int]] = defaultdict(list)
        for k, value in enumerate(self.after):
            self.positions[value].append(k)
        position = {entry["id"]: k for k, entry in enumerate(entries, 1)}
        held = [(t, position[t.first.id]) for t in touching if t.first.id in position]
        # Acknowledged by a time: the longest prefix any of them needs, and which needs it.
        acks = [(t.acked.completed.mono_ns, k, t.acked) for t, k in held if t.acked]
        acks.sort(key=_first)
        self.ack_times = [at for at, _, _ in acks]
        self.ack_needs: list[tuple[int, TransferOp | None]] = []
        need: tuple[int, TransferOp | None] = (0, None)
        for _, k, op in acks:
            if k > need[0]:
                need = (k, op)
            self.ack_needs.append(need)
        # Invoked after a time: the shortest prefix that holds any of them, and which.
        invokes = sorted(((t.first.invoked.mono_ns, k, t.first) for t, k in held), key=_first)
        self.invoke_times = [at for at, _, _ in invokes]
        self.future: list[tuple[int, TransferOp | None]] = [(len(self.after), None)]
        for _, k, op in reversed(invokes):
            self.future.append((k, op) if k < self.future[-1][0] else self.future[-1])
        self.future.reverse()

    def acknowledged_before(self, ns: int) -> tuple[int, TransferOp | None]:
        """The shortest prefix holding every transfer acknowledged before ``ns``."""
        index = bisect.bisect_left(self.ack_times, ns)
        return self.ack_needs[index - 1] if index else (0, None)

    def invoked_after(self, ns: int) -> tuple[int, TransferOp | None]:
        """The shortest prefix holding a transfer first invoked after ``ns``."""
        return self.future[bisect.bisect_right(self.invoke_times, ns)]


def _check_reads(
    check: HistoryCheck,
    account: str,
    entries: Sequence[Mapping[str, Any]],
    reads: list[ReadOp],
    touching: list[_Transfer],
    clock: _Clock,
) -> None:
    """Rule 3 for one account (see the module's docstring)."""
    order = _AccountOrder(entries, touching)
    # Reads completed so far, by completion: the longest prefix among those completed
    # before the current read was invoked is the floor for it.
    completed: list[tuple[int, int, int]] = []
    floor: tuple[int, ReadOp | None] = (0, None)
    reads = sorted(reads, key=lambda read: read.invoked.mono_ns)
    for index, read in enumerate(reads):
        check.reads += 1
        while completed and completed[0][0] < read.invoked.mono_ns:
            _, k, earlier = heapq.heappop(completed)
            if k > floor[0]:
                floor = (k, reads[earlier])
        candidates = order.positions.get(read.value, []) if read.value is not None else []
        needed, acked = order.acknowledged_before(read.invoked.mono_ns)
        limit, future = order.invoked_after(read.completed.mono_ns)
        pick = bisect.bisect_left(candidates, max(needed, floor[0]))
        other: TransferOp | ReadOp | None
        if not candidates:
            rule, detail, other = "not linearizable", "is the balance after no prefix", None
        elif candidates[-1] < needed:
            rule, detail, other = "stale read", "misses a transfer acknowledged before it", acked
        elif pick == len(candidates):
            rule, detail, other = "not linearizable", "went back before an earlier read", floor[1]
        elif candidates[pick] >= limit:
            rule, detail, other = "not linearizable", "saw a transfer invoked after it", future
        else:
            heapq.heappush(completed, (read.completed.mono_ns, candidates[pick], index))
            continue
        if rule == "stale read":
            check.stale_reads += 1
        else:
            check.nonlinearizable_reads += 1
        ops = [clock.describe(op) for op in (read, other) if op is not None]
        check.add(Violation(rule, f"{account}: the read of {read.value} {detail}", ops))
