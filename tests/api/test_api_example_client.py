"""The Ray client example runs against a live server and keeps the books balanced."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ledger_client.py"


def test_example_client_script(server: ServerProcess) -> None:
    # Nothing but the token mode: connect() finds the single-node Ray on loopback itself.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "opened 10 accounts" in out
    assert "top-ups: 10 committed, 0 refused" in out
    assert "payments: 10 committed, 0 refused" in out
    balances = [int(b) for b in re.findall(r"balance=(\d+)", out)]
    assert len(balances) == 10 and sum(balances) == 100_000
    assert "unknown account" in out
    assert re.search(r"sum of balances per currency: \{'USD': 0(, '[A-Z]{3}': 0)*\}", out)
