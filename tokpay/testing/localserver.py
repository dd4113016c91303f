"""Run ``tokpay serve`` as a child process for tests, benchmarks and drills.

The server gets its own process session, so ``kill_hard`` can SIGKILL everything
it started (gateway workers, Ray's GCS and raylet, the actors, the dev identity
provider) as a power cut would, and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from tokpay.cluster.gateway import wait_healthy
from tokpay.cluster.ports import free_port
from tokpay.cluster.sessions import kill_session_pids

START_TIMEOUT_SECONDS = 120.0
KILL_SECONDS = 4.0
STOP_SECONDS = 20.0


class LocalServer:
    """``tokpay serve`` as a child process in its own session."""

    def __init__(
        self, data_dir: Path, *, shards: int = 4, workers: int = 2, fsync: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.workers = workers
        self.fsync = fsync
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
            "--fsync" if self.fsync else "--no-fsync",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process = self.process

        def still_running() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")

        if not wait_healthy(self.url, START_TIMEOUT_SECONDS, check=still_running):
            raise RuntimeError(f"server not healthy in time:\n{self.log_path.read_text()[-3000:]}")

    def kill_hard(self) -> None:
        """SIGKILL every process of the server's session, as a power cut would."""
        if self.process is None:
            return
        kill_session_pids(self.process.pid, time.monotonic() + KILL_SECONDS)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_SECONDS)
        self.kill_hard()
