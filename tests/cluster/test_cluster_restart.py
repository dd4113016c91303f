"""``tokpay cluster destroy``: the one command that deletes a ledger's data, and only
when told twice (``--yes``) and nothing of the cluster runs.

(Restarting a cluster from its disks takes a minute of real nodes: that is measured
by the drills, ``tokpay drill --target all|pair|state``, in bench/RESULTS.md.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.cluster.test_status_fields import recorded_cluster
from tokpay.cli import app
from tokpay.cluster.sessions import start_ticks
from tokpay.cluster.state import read_state, write_state


def destroy(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["cluster", "destroy", "--data-dir", str(data_dir), *args])


@pytest.fixture
def stand_in_redis() -> Iterator[subprocess.Popen[bytes]]:
    """A real process in a session of its own, recorded as the cluster's Redis."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_destroy_asks_for_yes_and_refuses_a_running_cluster(
    tmp_path: Path, stand_in_redis: subprocess.Popen[bytes]
) -> None:
    data_dir = tmp_path / "c"
    recorded_cluster(data_dir)
    replica = data_dir / "nodes" / "n1" / "replicas" / "tokpay-shard-0-g1"
    replica.mkdir(parents=True)

    asked = destroy(data_dir)
    assert asked.exit_code == 2 and "--yes" in asked.output
    assert replica.is_dir()

    state = read_state(data_dir)
    state["redis"]["pid"] = stand_in_redis.pid
    state["redis"]["pid_start"] = start_ticks(stand_in_redis.pid)
    write_state(data_dir, state)
    refused = destroy(data_dir, "--yes")
    assert refused.exit_code == 2 and "redis" in refused.output and "down" in refused.output
    assert replica.is_dir()

    stand_in_redis.kill()
    stand_in_redis.wait()
    done = destroy(data_dir, "--yes")
    assert done.exit_code == 0, done.output
    assert not data_dir.exists()
