"""A shard store's checkpoints, on a thread of their own.

SQLite in WAL mode makes commits durable only at a checkpoint (synchronous=NORMAL); the
shard's log is the durable record meanwhile. ``Checkpointer`` runs the checkpoint every
``CHECKPOINT_SECONDS`` (or when woken), off the apply path: SQLite works off the
interpreter lock, so heartbeats and batches go on. The owner's thread deletes the log
segments a checkpoint covers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import NoReturn, Protocol

from tokpay.actors.timing import CHECKPOINT_SECONDS
from tokpay.store.shard_store import ShardStore

log = logging.getLogger("tokpay.shard")


class StoreOwner(Protocol):
    """What the checkpointer needs of the shard that owns the store."""

    label: str
    store: ShardStore

    def stop_untrusted(self, reason: str) -> NoReturn: ...

    def checkpoint_failed(self) -> None: ...


class Checkpointer:
    """Makes a shard's store durable every ``CHECKPOINT_SECONDS`` (or when woken), on a
    thread of its own; the owner's thread deletes the log segments it covers."""

    def __init__(self, service: StoreOwner) -> None:
        self._service = service
        self._store = service.store
        self._label = service.label
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _verify(self) -> None:
        """Check the whole store once after open (O(store): never in the open itself)."""
        started = time.perf_counter()
        try:
            verdict = self._store.verify()
        except Exception as error:
            verdict = repr(error)
        if verdict != "ok":
            self._service.stop_untrusted(f"store integrity check failed: {verdict}")
        log.info("%s: store verified in %.2f s", self._label, time.perf_counter() - started)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        self._verify()
        while not self._stopped.is_set():
            self._wake.wait(CHECKPOINT_SECONDS)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self._store.checkpoint()
            except OSError as error:
                # A failed fsync: later ones may succeed over pages the kernel dropped.
                self._service.stop_untrusted(f"store checkpoint fsync failed: {error!r}")
            except Exception:
                self._service.checkpoint_failed()
