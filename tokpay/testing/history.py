"""The history of a drill: every operation its clients invoked and what came back.

One JSON object per line (msgspec), streamed to a file as the load runs so memory stays
flat however long the drill: a transfer attempt (id, payer, legs; ``ok``, ``refused``
with its code, or ``unknown``: timeout, 5xx, connection error), a balance read (the
account; the value, or the failure), each with its invoke and completion times on the
monotonic clock and the wall clock, and after the run a resolution per transfer that
never got a definitive answer (what ``GET /v1/transfers/{id}`` said). The file has a
cap: reaching it stops the drill with ``HistoryFull`` rather than growing unseen.
tokpay.testing.history_check reads it back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

HISTORY_CAP_BYTES = 256 * 2**20
"""The default cap of one history file: about a million operations."""

Outcome = Literal["ok", "refused", "unknown"]

# The records hold no cycles, so the garbage collector need not track them: a checker
# holding a million of them would otherwise spend more time in it than checking.


class Stamp(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One instant on both clocks: monotonic for ordering, wall for people."""

    mono_ns: int
    wall_ns: int


def now() -> Stamp:
    return Stamp(time.monotonic_ns(), time.time_ns())


class Leg(msgspec.Struct, frozen=True, gc=False):
    account: str
    amount: int


class _Op(msgspec.Struct, frozen=True, tag_field="type", gc=False):
    client: str
    """Which client invoked it: one client runs one operation at a time."""
    invoked: Stamp
    completed: Stamp


class TransferOp(_Op, tag="transfer", frozen=True):
    """One attempt of a transfer (a client retries the same id until it is answered)."""

    id: str
    payer: str
    legs: tuple[Leg, ...]
    outcome: Outcome
    code: str = ""
    """Refused: the HTTP status and the problem's code; unknown: the status or error."""

    def body(self) -> dict[str, Any]:
        """The transfer as the ledger lists it (payer and legs), for the audit."""
        return {"from": self.payer, "to": [msgspec.structs.asdict(leg) for leg in self.legs]}

    @property
    def accounts(self) -> list[str]:
        return [self.payer, *(leg.account for leg in self.legs)]


class ReadOp(_Op, tag="read", frozen=True):
    """A balance read: ``value`` is None when it failed (``code`` says how)."""

    account: str
    value: int | None
    code: str = ""


class Resolution(msgspec.Struct, tag="resolution", tag_field="type", frozen=True, gc=False):
    """After the run, the ledger's answer for a transfer no attempt got an answer for."""

    id: str
    committed: bool
    at: Stamp


Record = TransferOp | ReadOp | Resolution


class HistoryFull(RuntimeError):
    """The history file reached its cap: the drill stops instead of growing unbounded."""


class HistoryWriter:
    """Appends records to a history file, at most ``cap_bytes`` of them."""

    def __init__(self, path: Path, cap_bytes: int = HISTORY_CAP_BYTES) -> None:
        self.path = path
        self.cap_bytes = cap_bytes
        self.written = 0
        self.records = 0
        self._encoder = msgspec.json.Encoder()
        self._file = path.open("wb")

    def append(self, record: Record) -> None:
        line = self._encoder.encode(record) + b"\n"
        if self.written + len(line) > self.cap_bytes:
            raise HistoryFull(
                f"history {self.path} reached its cap of {self.cap_bytes} bytes "
                f"after {self.records} records"
            )
        self._file.write(line)
        self.written += len(line)
        self.records += 1

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> Iterator[Record]:
    """The records of a history file, in the order they were written."""
    decoder = msgspec.json.Decoder(Record)
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError as error:
                raise ValueError(f"{path}:{number}: {error}") from error
