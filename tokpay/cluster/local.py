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

from tokpay.cluster import sessions
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.nodes import (
    HEAD_NAME,
    ensure_auth_token,
    inherited_env,
    link_ray_temp_dir,
    node_env,
    node_name,
    node_record,
    redis_record,
)
from tokpay.cluster.ports import free_fixed_port
from tokpay.cluster.probes import RayNode, ray_node_table, redis_server_pid
from tokpay.cluster.sessions import ProcessRecord, log_tail, session_running
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
REDIS_START_TIMEOUT_SECONDS = 20.0
NODE_START_TIMEOUT_SECONDS = 90.0
CLOCK_SLACK_MS = 1000
"""A restarted node counts as up once the GCS lists it as registered after the launch
(less this slack); an entry from before is its previous life, not yet declared dead."""
RAY_START_DONE = "Ray runtime started."
"""What ``ray start`` logs once it has set the node up. It still talks to the GCS for a
moment after the raylet registered; a head killed in that window makes it give up."""


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
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
        self.data_dir = data_dir.resolve()
        self.node_count = nodes
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
            nodes=len(state["nodes"]),
            gcs_port=state["gcs_port"],
            redis_port=state["redis"]["port"],
            client_port=state["ray_client_port"],
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
        return list(self._require_state()["nodes"])

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """Every node by name: role, pid (its session), resource, data dir, log."""
        return self._require_state()["nodes"]

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
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": state["auth_token_path"],
            "TOKPAY_RAY_ADDRESS": state["gcs_address"],
        }

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
        self._state = ClusterStateFile(
            version=STATE_VERSION,
            gcs_address=f"127.0.0.1:{gcs_port}",
            gcs_port=gcs_port,
            ray_client_port=client_port,
            auth_token_path=str(ensure_auth_token(self.data_dir)),
            ray_temp_link=str(link),
            redis=redis_record(self.data_dir, self.logs_dir, redis_port),
            nodes={
                name: node_record(name, self.data_dir, self.logs_dir, link, gcs_port, redis_port)
                for name in names
            },
            services={},
            settings=dict(self.settings),
        )
        self._save()
        try:
            self._start_redis()
            self._start_nodes([HEAD_NAME])
            self._start_nodes(names[1:])
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
        started = []
        if not session_running(state["redis"]):
            self._start_redis()
            started.append("redis")
        stopped = [n for n in self.node_names if not session_running(self._node(n))]
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
        """
        if self._state is None:
            if not self.state_path.exists():
                return
            recorded = LocalCluster.load(self.data_dir)
            self._state, self.settings = recorded._state, recorded.settings
        state = self._require_state()
        workers = [r for r in state["nodes"].values() if r["role"] == "worker"]
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
        self._wait_alive(log_offsets, launched_ms)

    def _wait_alive(self, log_offsets: dict[str, int], launched_ms: int) -> None:
        """Until the GCS lists every node alive, registered after ``launched_ms``, and the
        node's ``ray start`` logged (past its log offset) that it is done."""
        names = list(log_offsets)
        deadline = time.monotonic() + NODE_START_TIMEOUT_SECONDS
        while True:
            for name in names:
                if not session_running(self._node(name)):
                    raise ClusterError(
                        f"node {name} exited while starting:\n{log_tail(self._node(name))}"
                    )
            up = {
                name
                for name, offset in log_offsets.items()
                if RAY_START_DONE in sessions.log_since(self._node(name), offset)
            }
            if up.issuperset(names):
                up &= {
                    name
                    for entry in self._ray_node_table() or []
                    if entry.alive and entry.start_time_ms >= launched_ms - CLOCK_SLACK_MS
                    for name in entry.names
                }
                if up.issuperset(names):
                    return
            if time.monotonic() > deadline:
                missing = sorted(set(names) - up)
                tails = "\n".join(f"--- {n}:\n{log_tail(self._node(n))}" for n in missing)
                raise ClusterError(
                    f"nodes {missing} not alive in Ray after {NODE_START_TIMEOUT_SECONDS:.0f} s"
                    f"\n{tails}"
                )
            time.sleep(sessions.POLL_SECONDS)

    def _ray_node_table(self) -> list[RayNode] | None:
        state = self._require_state()
        return ray_node_table(state["gcs_address"], state["gcs_port"], self.child_env())

    # -- Redis -------------------------------------------------------------------------

    def _start_redis(self) -> None:
        record = self._require_state()["redis"]
        Path(record["data_dir"]).mkdir(parents=True, exist_ok=True)
        self._launch("redis", record, inherited_env(), cwd=self.data_dir)
        self._save()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
        # Ours answers with its own pid: a Redis of someone else's on the port would not.
        while redis_server_pid(record["port"]) != record["pid"]:
            if not session_running(record):
                raise ClusterError(f"Redis exited while starting:\n{log_tail(record)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"Redis not serving in time:\n{log_tail(record)}")
            time.sleep(sessions.POLL_SECONDS)

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
