"""Fixtures for the actor integration tests: one local Ray instance, ledgers on real files.

Actor names are registered in namespace "tokpay", so every ledger a test starts is
stopped afterwards (each shard and the coordinator killed, their names released)
before the next one may start under the same names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from tokpay.actors.deploy import LedgerHandles, read_shard_count, start_ledger
from tokpay.actors.naming import COORDINATOR_NAME, NAMESPACE, shard_actor_name

OBJECT_STORE_BYTES = 150 * 1024 * 1024
NAME_RELEASE_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    # address="local": always a private instance, never another engineer's running cluster.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        namespace=NAMESPACE,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _registered(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


class LedgerRunner:
    """Starts ledgers with ``start_ledger`` and kills every actor it started.

    The actors are not detached: they live only while their owner (this process) holds a
    handle, so the runner keeps the handles it started until ``stop``.
    """

    def __init__(self) -> None:
        self._shard_counts: set[int] = set()
        self._owned: list[LedgerHandles] = []

    def start(self, data_dir: Path, shard_count: int) -> LedgerHandles:
        count = read_shard_count(data_dir, shard_count)
        self._shard_counts.add(count)
        handles = start_ledger(data_dir, count)
        self._owned.append(handles)
        return handles

    def stop(self) -> None:
        """Kill every shard and the coordinator; return once their names are free."""
        names = {COORDINATOR_NAME}
        for count in self._shard_counts:
            names.update(shard_actor_name(index) for index in range(count))
        for name in names:
            handle = _registered(name)
            if handle is not None:
                ray.kill(handle)
        deadline = time.monotonic() + NAME_RELEASE_TIMEOUT_SECONDS
        while any(_registered(name) is not None for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"actor names still registered after kill: {sorted(names)}")
            time.sleep(0.05)
        self._owned.clear()


def _runner() -> Iterator[LedgerRunner]:
    runner = LedgerRunner()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def ledger_runner(ray_session: None) -> Iterator[LedgerRunner]:
    """Ledgers of one test, stopped when it ends."""
    yield from _runner()


@pytest.fixture(scope="module")
def module_ledger_runner(ray_session: None) -> Iterator[LedgerRunner]:
    """Ledgers shared by the tests of one module, stopped after the last of them."""
    yield from _runner()
