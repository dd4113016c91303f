"""Shared fixtures: a real ``tokpay serve`` per need, on a free port and a temp dir."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tokpay.testing.localserver import LocalServer as ServerProcess

__all__ = ["ServerProcess"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One running server shared by the HTTP tests (each test uses its own ids)."""
    process = ServerProcess(tmp_path_factory.mktemp("server") / "data", shards=4)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
