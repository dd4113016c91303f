"""``tokpay cluster status --json`` keeps its fields: scripts and operators rely on them
(fields may be added, never renamed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tokpay.cluster.local import LocalCluster
from tokpay.cluster.nodes import node_record, redis_record
from tokpay.cluster.state import STATE_VERSION, ClusterStateFile, write_state
from tokpay.cluster.status import status_document

NODE_FIELDS = {"node_id", "pid", "role", "alive", "primaries", "backups", "spares"}
GROUP_FIELDS = {"group", "epoch", "primary", "backup", "backup_in_sync", "replication_lag", "down"}
MEMBER_FIELDS = {"name", "node", "alive", "sequence"}
TOP_FIELDS = {
    "nodes",
    "groups",
    "services",
    "failovers",
    "backup_rebuilds",
    "head_copies",
    "spares_missing",
    "gcs_address",
    "processes",
}


def recorded_cluster(data_dir: Path) -> LocalCluster:
    """A cluster state file as ``up()`` writes it (nothing running)."""
    data_dir.mkdir()
    logs, link = data_dir / "logs", data_dir / "ray"
    state = ClusterStateFile(
        version=STATE_VERSION,
        gcs_address="127.0.0.1:20001",
        gcs_port=20001,
        ray_client_port=20003,
        auth_token_path=str(data_dir / "auth_token"),
        ray_temp_link=str(link),
        redis=redis_record(data_dir, logs, 20002),
        nodes={n: node_record(n, data_dir, logs, link, 20001, 20002) for n in ("n0", "n1")},
        services={"gateway": {"pid": 4321, "pid_start": 1, "argv": ["x"], "log": "x.log"}},
        settings={"port": 8000, "workers": 1, "shards": 1},
    )
    write_state(data_dir, state)
    return LocalCluster.load(data_dir)


def test_status_document_keeps_its_fields(tmp_path: Path) -> None:
    cluster = recorded_cluster(tmp_path / "c")
    member = SimpleNamespace(name="shard-0-a", node="n0", alive=True, sequence=7)
    backup = SimpleNamespace(name="shard-0-b", node="n1", alive=True, sequence=7)
    group = SimpleNamespace(
        group="shard-0",
        epoch=2,
        primary=member,
        backup=backup,
        backup_ready=True,
        lag=0,
        down=None,
    )
    controller = SimpleNamespace(
        nodes={"n0": True, "n1": True},
        groups=[group],
        failovers=1,
        rebuilds=0,
        head_copies=[],
        spares_missing=[],
        spares={"shard-0": "n1"},
    )

    document = status_document(cluster, controller)

    assert document.keys() >= TOP_FIELDS
    assert [node["node_id"] for node in document["nodes"]] == ["n0", "n1"]
    for node in document["nodes"]:
        assert node.keys() >= NODE_FIELDS
    n0, n1 = document["nodes"]
    assert (n0["role"], n0["primaries"], n0["backups"]) == ("head", ["shard-0"], [])
    assert (n1["role"], n1["primaries"], n1["backups"]) == ("worker", [], ["shard-0"])
    assert (n0["spares"], n1["spares"]) == ([], ["shard-0"])
    (only,) = document["groups"]
    assert only.keys() >= GROUP_FIELDS
    assert only["primary"].keys() >= MEMBER_FIELDS and only["backup"].keys() >= MEMBER_FIELDS
    assert document["services"]["gateway"]["pid"] == 4321
    assert {"pid", "alive"} <= document["services"]["gateway"].keys()
    # Every process of the cluster by name, with its pid (None: not running).
    assert document["processes"] == {"redis": None, "n0": None, "n1": None, "gateway": None}
