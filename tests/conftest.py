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
    # Every web test signs in from 127.0.0.1, and at the default 30 login starts a minute
    # a fast run got 429 on a login. The limit itself is tested with its own settings
    # (tests/web/test_web_oidc.py). The child takes the environment as it starts.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKPAY_LOGIN_STARTS_PER_MINUTE", "100000")
        process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
