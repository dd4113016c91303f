"""Shared fixtures: a real ``tokpay serve`` process per need, on a free port and a temp dir.

Each server runs in its own process session, so a test can SIGKILL everything
that server started (gateway workers, Ray's GCS, raylet, actors) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (all started by the server we launched)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


class ServerProcess:
    """``tokpay serve`` as a child process in its own session."""

    def __init__(self, data_dir: Path, *, shards: int = 4, workers: int = 2) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "tokpay.cli", "serve",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--shards", str(self.shards),
            "--workers", str(self.workers),
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy in time:\n{self.log_path.read_text()[-3000:]}")

    def kill_hard(self) -> None:
        """SIGKILL every process of the server's session, as a power cut would."""
        if self.process is None:
            return
        sid = self.process.pid
        for _ in range(20):
            pids = session_pids(sid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        self.kill_hard()


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
