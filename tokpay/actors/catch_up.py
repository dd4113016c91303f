"""Backpressure while a new backup catches up, so that the catch-up always ends.

A backup installed from a state copy replays, off its lock, the records its primary
shipped while the copy was made and sent; only the last few are replayed under the lock
(``CATCH_UP_UNDER_LOCK_RECORDS``). A primary writing at full speed can ship records as
fast as the catch-up replays them into a large store, and then the catch-up never gets
close enough to finish (measured at 10 million transfers of history: it stayed about
30 s behind for as long as it was watched).

So while the catch-up runs, each record the backup keeps is acknowledged only once the
catch-up is within an allowed lag of it, and the allowed lag shrinks by one with every
record kept. Once the lag has shrunk to the allowance, the catch-up must replay two records
for every one the primary writes: the primary is slowed to about half the catch-up's rate,
never stopped, and the lag reaches the last step's size after at most as many records as it
was behind when the catch-up began. A catch-up that stops moving holds each record for at
most ``CATCH_UP_HOLD_SECONDS``, so a stuck install slows writes but never stops them.
"""

from __future__ import annotations

import threading
import time

from tokpay.actors.timing import CATCH_UP_HOLD_SECONDS

CATCH_UP_UNDER_LOCK_RECORDS = 16
"""A catch-up replays at most this many records under the lock (the rest off it)."""


class CatchUpThrottle:
    """The catch-up's progress, and the wait of each record kept meanwhile."""

    def __init__(self, applied: int, kept: int) -> None:
        self._changed = threading.Condition()
        self._applied = applied
        self._allowed = max(kept - applied, CATCH_UP_UNDER_LOCK_RECORDS)
        self._done = False
        self.held_seconds = 0.0
        """Total time records were held (reported when the catch-up ends)."""
        self.timeouts = 0
        """Records that went on after ``CATCH_UP_HOLD_SECONDS`` without the catch-up."""

    def replayed(self, sequence: int) -> None:
        """The catch-up replayed the record at ``sequence``."""
        with self._changed:
            if sequence > self._applied:
                self._applied = sequence
                self._changed.notify_all()

    def hold(self, sequence: int) -> None:
        """The record at ``sequence`` was kept: return once the catch-up is close enough to
        it (called off the backup's lock, before the record is acknowledged)."""
        started = time.monotonic()
        deadline = started + CATCH_UP_HOLD_SECONDS
        with self._changed:
            self._allowed = max(self._allowed - 1, CATCH_UP_UNDER_LOCK_RECORDS)
            while not self._done and sequence - self._applied > self._allowed:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    break
                self._changed.wait(left)
            self.held_seconds += time.monotonic() - started

    def finish(self) -> None:
        """The catch-up ended (installed or abandoned): hold nothing from now on."""
        with self._changed:
            self._done = True
            self._changed.notify_all()
