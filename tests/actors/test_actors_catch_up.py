"""The catch-up's backpressure: a writer faster than a new backup's catch-up is held back
until the catch-up gains on it, and a stuck catch-up slows writes but never stops them."""

from __future__ import annotations

import threading
import time

from tokpay.actors.catch_up import CATCH_UP_UNDER_LOCK_RECORDS, CatchUpThrottle
from tokpay.actors.timing import CATCH_UP_HOLD_SECONDS


def test_a_writer_faster_than_the_catch_up_is_held_until_the_catch_up_ends() -> None:
    start_lag = 200
    kept = start_lag  # records kept while the copy was made; none replayed yet
    throttle = CatchUpThrottle(0, kept)
    guard = threading.Lock()
    finished = threading.Event()

    def catch_up() -> None:
        applied = 0
        while True:
            with guard:
                if kept - applied <= CATCH_UP_UNDER_LOCK_RECORDS:
                    finished.set()  # the last step (under the lock) would run now
                    throttle.finish()
                    return
            applied += 1
            time.sleep(0.002)  # replaying a record costs time; keeping one costs nothing
            throttle.replayed(applied)

    replayer = threading.Thread(target=catch_up)
    replayer.start()
    written = 0
    deadline = time.monotonic() + 20
    while not finished.is_set() and time.monotonic() < deadline:
        with guard:
            kept += 1
            sequence = kept
        throttle.hold(sequence)
        written += 1
    replayer.join(timeout=5)
    assert finished.is_set(), f"the catch-up never ended: {written} records written meanwhile"
    # The lag shrank by at least one per record written, so the writer went on (it was
    # held back, not stopped) and wrote no more than the starting lag before the end.
    assert 0 < written <= start_lag
    assert throttle.timeouts == 0
    assert throttle.held_seconds > 0


def test_a_stuck_catch_up_holds_each_record_only_for_a_bounded_time() -> None:
    throttle = CatchUpThrottle(0, 100)
    started = time.monotonic()
    for sequence in range(101, 104):
        throttle.hold(sequence)
    took = time.monotonic() - started
    assert throttle.timeouts == 3
    assert 3 * CATCH_UP_HOLD_SECONDS <= took < 3 * CATCH_UP_HOLD_SECONDS + 1
    throttle.finish()  # installed or abandoned: nothing is held from now on
    started = time.monotonic()
    throttle.hold(200)
    assert time.monotonic() - started < 0.05
    assert throttle.timeouts == 3


def test_records_within_the_allowed_lag_are_not_held() -> None:
    throttle = CatchUpThrottle(100, 100 + CATCH_UP_UNDER_LOCK_RECORDS)
    started = time.monotonic()
    throttle.hold(100 + CATCH_UP_UNDER_LOCK_RECORDS)
    assert time.monotonic() - started < 0.05
    assert throttle.timeouts == 0
