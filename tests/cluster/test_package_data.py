"""The wheel carries the per-machine scripts, so an installed ``tokpay cluster up`` finds
them (as package data, through importlib.resources) from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"common.sh", "head.sh", "worker.sh", "redis.sh"}


def test_wheel_ships_the_cluster_scripts(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("tokpay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"tokpay/cluster/scripts/{name}" for name in SCRIPTS} <= names
    assert "tokpay/cli/__main__.py" in names
