"""Which ASGI server runs the gateway: uvicorn or granian, 2 worker processes each.

Serves a trivial FastAPI route (``bench/trivial_app.py``) with each server and
drives it with wrk on this machine. This is the measurement behind
``tokpay gateway --server granian`` being the default.

    .venv/bin/python bench/compare_servers.py [--seconds 8] [--connections 64]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tokpay.cluster.ports import free_port

HERE = Path(__file__).resolve().parent


def measure(command: list[str], port: int, seconds: int, connections: int) -> tuple[float, str]:
    server = subprocess.Popen(
        command, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
             f"http://127.0.0.1:{port}/ping"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", output)
    return rate, p50.group(1) if p50 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    print("| server (2 workers, trivial FastAPI route) | requests/s | p50 |")
    print("|---|---:|---:|")
    for name in ("uvicorn", "granian"):
        port = free_port()
        if name == "uvicorn":
            command = [str(bin_dir / "uvicorn"), "trivial_app:app", "--workers", "2",
                       "--port", str(port), "--log-level", "warning"]  # fmt: skip
        else:
            command = [str(bin_dir / "granian"), "--interface", "asgi", "--workers", "2",
                       "--port", str(port), "trivial_app:app"]  # fmt: skip
        rate, p50 = measure(command, port, args.seconds, args.connections)
        print(f"| {name} | {rate:,.0f} | {p50} |")


if __name__ == "__main__":
    main()
