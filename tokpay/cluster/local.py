"""A multi-node TokPay Ray cluster on this machine, for ``tokpay cluster`` and drills.

Every Ray node is started by the ``head.sh`` or ``worker.sh`` script (the scripts an
operator runs, one per machine; shipped in ``tokpay/cluster/scripts``) in a process
session of its own (tokpay.cluster.sessions), and the session stands for a machine.
Each node has its own data directory (DATA_DIR/nodes/NAME) and offers the resource
``tokpay_node_NAME``. The head keeps Ray's GCS tables in a Redis (``redis.sh``, fsync
on every write), so the head can be killed and started again on the same port without
losing actors, names or nodes. What was started is written to DATA_DIR/cluster.json
(tokpay.cluster.state), so another process can ``load`` the cluster, kill and restart
its nodes, and ``down`` stops exactly what it lists.

This module never imports Ray: questions to the GCS go through a child process
(tokpay.cluster.probes), so the caller may be a Ray driver of another cluster.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from tokpay.cluster import netns, sessions
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.nodes import (
    DRIVERS_NAME,
    HEAD_NAME,
    ensure_auth_token,
    head_host,
    inherited_env,
    link_ray_temp_dir,
    node_env,
    node_name,
    node_record,
    redis_password_file,
    redis_record,
)
from tokpay.cluster.ports import free_fixed_port
from tokpay.cluster.probes import RayNode, ray_node_table
from tokpay.cluster.sessions import ProcessRecord, session_running
from tokpay.cluster.startup import wait_nodes_alive, wait_redis_serving
from tokpay.cluster.state import (
    STATE_VERSION,
    ClusterStateFile,
    NodeRecord,
    RedisRecord,
    SettingValue,
    read_state,
    state_path,
    write_state,
)

MAX_NODES = 16


class LocalCluster:
    """Redis, a Ray head and worker nodes, and any services, each in its own session.

    ``LocalCluster(data_dir, nodes).up()`` starts a new one; ``LocalCluster.load(data_dir)``
    takes over a running one from its DATA_DIR/cluster.json. One process at a time
    should change a cluster (start, kill, stop); any number may read it.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        gcs_port: int | None = None,
        redis_port: int | None = None,
        client_port: int | None = None,
        *,
        netns_on: bool = False,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
        self.data_dir = data_dir.resolve()
        self.node_count = nodes
        self.netns = netns_on
        """Every node in a network namespace of its own (tokpay.cluster.netns)."""
        self.settings: dict[str, SettingValue] = {}
        """Free-form values kept with the cluster (the CLI stores its ports and sizes)."""
        self._requested_gcs_port = gcs_port
        self._requested_redis_port = redis_port
        self._requested_client_port = client_port
        self._state: ClusterStateFile | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- state -------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return state_path(self.data_dir)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @classmethod
    def load(cls, data_dir: Path) -> LocalCluster:
        """The cluster recorded in DATA_DIR/cluster.json (running or not)."""
        state = read_state(data_dir.resolve())
        cluster = cls(
            data_dir,
            nodes=sum(1 for record in state["nodes"].values() if record["role"] != "drivers"),
            gcs_port=state["gcs_port"],
            redis_port=state["redis"]["port"],
            client_port=state["ray_client_port"],
            netns_on=state.get("netns", False),
        )
        cluster.settings = dict(state["settings"])
        cluster._state = state
        return cluster

    def _require_state(self) -> ClusterStateFile:
        if self._state is None:
            raise ClusterError(f"the cluster in {self.data_dir} was never started (call up())")
        return self._state

    def _save(self) -> None:
        state = self._require_state()
        state["settings"] = dict(self.settings)
        write_state(self.data_dir, state)

    @property
    def ray_address(self) -> str:
        """The GCS address drivers attach to: ``ray.init(address=...)``."""
        return self._require_state()["gcs_address"]

    @property
    def auth_token_path(self) -> Path:
        """The cluster's own Ray auth token file (every node and driver presents it)."""
        return Path(self._require_state()["auth_token_path"])

    @property
    def head_name(self) -> str:
        return HEAD_NAME

    @property
    def node_names(self) -> list[str]:
        """The nodes TokPay runs on (a --netns cluster's drivers' node is not one)."""
        nodes = self._require_state()["nodes"]
        return [name for name, record in nodes.items() if record["role"] != "drivers"]

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """Every Ray node by name (the drivers' node too): role, pid (its session),
        resource, data dir, log."""
        return self._require_state()["nodes"]

    def node_ip(self, name: str) -> str | None:
        """The address of node ``name`` of a --netns cluster; None otherwise (Ray's guess)."""
        return netns.node_address(netns.node_index(name)) if self.netns else None

    @property
    def driver_node_ip(self) -> str | None:
        """The address a driver here must attach with (``ray.init(_node_ip_address=)``):
        a --netns cluster's drivers' node; None: Ray's choice (the head's node)."""
        return netns.BRIDGE_ADDRESS if self.netns else None

    @property
    def driver_node(self) -> str:
        """The node whose raylet this host's drivers (the gateway) attach to: the drivers'
        node of a --netns cluster, else the head (Ray prefers it among one host's nodes)."""
        return DRIVERS_NAME if self.netns else self.head_name

    @property
    def redis(self) -> RedisRecord:
        """The Redis behind the GCS: pid (its session), port, data dir, log."""
        return self._require_state()["redis"]

    @property
    def services(self) -> dict[str, int | None]:
        """Every service ever spawned, by name: the pid of its session (None if never)."""
        return {name: record["pid"] for name, record in self._require_state()["services"].items()}

    def driver_env(self) -> dict[str, str]:
        """What a process needs in its environment, before it imports Ray, to attach.

        The nodes run with token authentication and this cluster's own token file. A
        driver given an explicit address presents a token only if RAY_AUTH_MODE says so
        when Ray is imported. RAY_AUTH_TOKEN, if set, would win over the file: leave it
        unset. TOKPAY_RAY_ADDRESS is where TokPay's gateway looks for the cluster.
        """
        state = self._require_state()
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": state["auth_token_path"],
            "TOKPAY_RAY_ADDRESS": state["gcs_address"],
        }
        if self.driver_node_ip is not None:
            env["TOKPAY_RAY_NODE_IP"] = self.driver_node_ip
        return env

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The whole environment of a child process that attaches to this cluster:
        this process's (less another cluster's address or token), ``driver_env()``, then
        ``extra``."""
        return inherited_env() | self.driver_env() | (extra or {})

    # -- up and down -------------------------------------------------------------------

    def up(self) -> None:
        """Start Redis, the head and the worker nodes; return once Ray lists all alive.

        On any failure everything started so far is stopped again and ClusterError
        says which part failed, with the tail of its log.
        """
        if self.state_path.exists() and self._anything_running(LocalCluster.load(self.data_dir)):
            raise ClusterError(f"a cluster from {self.state_path} is still running; down() it")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        gcs_port = self._requested_gcs_port or free_fixed_port()
        redis_port = self._requested_redis_port or free_fixed_port(exclude={gcs_port})
        client_port = self._requested_client_port or free_fixed_port(exclude={gcs_port, redis_port})
        link = link_ray_temp_dir(self.data_dir)
        names = [node_name(index) for index in range(self.node_count)]
        ray_nodes = [*names, DRIVERS_NAME] if self.netns else names
        self._state = ClusterStateFile(
            version=STATE_VERSION,
            gcs_address=f"{head_host(self.netns)}:{gcs_port}",
            gcs_port=gcs_port,
            ray_client_port=client_port,
            auth_token_path=str(ensure_auth_token(self.data_dir)),
            ray_temp_link=str(link),
            redis=redis_record(self.data_dir, self.logs_dir, redis_port, self.netns),
            nodes={
                name: node_record(
                    name, self.data_dir, self.logs_dir, link, gcs_port, redis_port, self.netns
                )
                for name in ray_nodes
            },
            services={},
            settings=dict(self.settings),
            netns=self.netns,
        )
        self._save()
        try:
            if self.netns:
                netns.create_network(self.node_count)
            self._start_redis()
            self._start_nodes([HEAD_NAME])
            self._start_nodes(ray_nodes[1:])
        except BaseException:
            self.down()
            raise

    def restart(self) -> list[str]:
        """Start again, from its disks, whatever of this recorded cluster is not running:
        Redis, the head, the workers (same names, ports and data dirs). Running parts are
        left alone. Returns what was started; services are the caller's business.
        """
        state = self._require_state()
        link_ray_temp_dir(self.data_dir)  # down() removed the link
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.netns and not netns.network_present(self.node_count):
            netns.remove_network(self.node_count)  # a part left over: start afresh
            netns.create_network(self.node_count)
        started = []
        if not session_running(state["redis"]):
            self._start_redis()
            started.append("redis")
        stopped = [n for n in self.nodes if not session_running(self._node(n))]
        # The head first: the workers attach to its GCS.
        for batch in (
            [n for n in stopped if n == HEAD_NAME],
            [n for n in stopped if n != HEAD_NAME],
        ):
            if batch:
                self._start_nodes(batch)
                started.extend(batch)
        return started

    def down(self) -> None:
        """Stop the services, the workers, the head and Redis that this state started.

        SIGTERM first, then SIGKILL of whatever is left in each session after a grace
        period. Data stays on disk. Safe to call again, or on a cluster half started.
        A --netns cluster's namespaces, veths and bridge are removed last.
        """
        if self._state is None:
            if not self.state_path.exists():
                return
            recorded = LocalCluster.load(self.data_dir)
            self._state, self.settings = recorded._state, recorded.settings
        state = self._require_state()
        workers = [r for r in state["nodes"].values() if r["role"] != "head"]
        heads = [r for r in state["nodes"].values() if r["role"] == "head"]
        stages: list[list[ProcessRecord]] = [
            list(state["services"].values()),
            list(workers),
            list(heads),
            [state["redis"]],
        ]
        for stage in stages:
            sessions.stop_sessions(stage)
        for process in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=sessions.KILL_TIMEOUT_SECONDS)
        self._children.clear()
        Path(state["ray_temp_link"]).unlink(missing_ok=True)
        self._save()
        if self.netns:
            netns.remove_network(self.node_count)

    # -- nodes -------------------------------------------------------------------------

    def _node(self, name: str) -> NodeRecord:
        record = self._require_state()["nodes"].get(name)
        if record is None:
            raise ClusterError(f"no node {name!r}; nodes are {self.node_names}")
        return record

    def node_running(self, name: str) -> bool:
        """Whether any process of the node's session is alive (the machine is up)."""
        return session_running(self._node(name))

    def node_alive(self, name: str) -> bool:
        """Whether the node's machine is up and Ray's GCS lists the node alive.

        False while the head is down: no GCS, nothing can be scheduled anywhere.
        """
        return self.node_running(name) and name in self.nodes_alive_in_ray()

    def nodes_alive_in_ray(self) -> set[str]:
        """The nodes the GCS lists alive (empty if the GCS does not answer).

        A node killed a moment ago stays listed until the GCS's health checks give up
        on it (about health_check_period_ms x health_check_failure_threshold).
        """
        return {
            name for entry in self._ray_node_table() or [] if entry.alive for name in entry.names
        }

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of the node's session: the machine died."""
        sessions.kill_session(self._node(name))
        self._reap(name)
        self._save()

    def start_node(self, name: str) -> None:
        """Start a killed node again (same name, resources, data dir, ports); wait for it.

        The head comes back on the same GCS port, reloads the cluster from Redis, and
        the worker nodes' raylets reconnect to it.
        """
        record = self._node(name)
        if session_running(record):
            raise ClusterError(f"node {name} is running; kill_node({name!r}) first")
        if record["role"] == "head" and not session_running(self._require_state()["redis"]):
            raise ClusterError("Redis is not running: the head would have no GCS storage")
        self._start_nodes([name])

    def _start_nodes(self, names: list[str]) -> None:
        state = self._require_state()
        launched_ms = int(time.time() * 1000)
        log_offsets: dict[str, int] = {}
        for name in names:
            record = state["nodes"][name]
            Path(record["data_dir"]).mkdir(parents=True, exist_ok=True)
            Path(record["ray_temp_dir"]).mkdir(parents=True, exist_ok=True)
            log_offsets[name] = sessions.log_size(record)
            env = node_env(state, record, self.data_dir)
            self._launch(name, record, env, cwd=Path(record["data_dir"]))
        self._save()
        wait_nodes_alive(state["nodes"], log_offsets, launched_ms, self._ray_node_table)

    def _ray_node_table(self) -> list[RayNode] | None:
        state = self._require_state()
        return ray_node_table(state["gcs_address"], self.child_env())

    # -- Redis -------------------------------------------------------------------------

    def _start_redis(self) -> None:
        record = self._require_state()["redis"]
        Path(record["data_dir"]).mkdir(parents=True, exist_ok=True)
        self._launch("redis", record, inherited_env(), cwd=self.data_dir)
        self._save()
        password = redis_password_file(self.data_dir).read_text() if self.netns else None
        wait_redis_serving(record, head_host(self.netns), password)

    # -- services ----------------------------------------------------------------------

    def spawn_service(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Run ``argv`` in a session of its own (logs in DATA_DIR/logs/NAME.log); its pid.

        The process's environment is ``child_env(env)``.
        """
        state = self._require_state()
        if name in state["nodes"] or name == "redis":
            raise ClusterError(f"{name!r} names a node or Redis; pick another service name")
        previous = state["services"].get(name)
        if previous is not None and session_running(previous):
            raise ClusterError(f"service {name} is running (pid {previous['pid']})")
        record = ProcessRecord(
            pid=None, pid_start=None, argv=list(argv), log=str(self.logs_dir / f"{name}.log")
        )
        state["services"][name] = record
        pid = self._launch(name, record, self.child_env(env), cwd=self.data_dir)
        self._save()
        return pid

    @property
    def service_records(self) -> dict[str, ProcessRecord]:
        return self._require_state()["services"]

    def service_alive(self, name: str) -> bool:
        record = self._require_state()["services"].get(name)
        return record is not None and session_running(record)

    def kill_service(self, name: str) -> None:
        """SIGKILL every process of the service's session."""
        record = self._require_state()["services"].get(name)
        if record is None:
            raise ClusterError(f"no service {name!r}; services are {sorted(self.services)}")
        sessions.kill_session(record)
        self._reap(name)
        self._save()

    # -- processes ---------------------------------------------------------------------

    def _launch(self, name: str, record: ProcessRecord, env: dict[str, str], cwd: Path) -> int:
        """Start ``record['argv']`` as the leader of a new session; record its pid."""
        self._reap(name)
        process = sessions.launch(name, record, env, cwd)
        self._children[name] = process
        return process.pid

    def _reap(self, name: str) -> None:
        """Collect the exit status of a child of ours that was killed (no zombie left)."""
        process = self._children.pop(name, None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=sessions.KILL_TIMEOUT_SECONDS)

    @staticmethod
    def _anything_running(cluster: LocalCluster) -> bool:
        state = cluster._require_state()
        records: list[ProcessRecord] = [state["redis"], *state["nodes"].values()]
        records.extend(state["services"].values())
        return any(session_running(record) for record in records)
