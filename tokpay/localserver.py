"""Run ``tokpay serve`` as a child process for tests, benchmarks and drills.

The server gets its own process session, so ``kill_hard`` can SIGKILL everything
it started (gateway workers, Ray's GCS and raylet, the actors, the dev identity
provider) as a power cut would, and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

START_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (all started by the server we launched).

    Zombies are left out: they are dead, cannot be killed again, and stay until their
    parent (perhaps another process that started them) reaps them.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid and not _is_zombie(entry):
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _is_zombie(proc_entry: Path) -> bool:
    try:
        stat = (proc_entry / "stat").read_text()
    except OSError:
        return True  # gone since it was listed
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(")") + 2] in "ZX"


def wait_healthy(url: str, timeout: float, *, check: Callable[[], None] = lambda: None) -> bool:
    """Poll ``url``/healthz until it answers 200 (True) or ``timeout`` passes (False).

    ``check`` runs before each try and may raise (say, the server process has exited).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


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
