"""Run a multi-node TokPay Ray cluster on this machine, for ``tokpay cluster`` and drills.

Every Ray node is started by ``cluster/head.sh`` or ``cluster/worker.sh`` (the scripts an
operator runs, one per machine) in a process session of its own, and the session
stands for a machine: the node's pid is its session leader's, SIGKILL of every process
in the session is "the machine died", and nothing else on this machine is touched.
Each node has its own data directory (DATA_DIR/nodes/NAME) and offers the resource
``tokpay_node_NAME``. The head keeps Ray's GCS tables in a Redis (``cluster/redis.sh``,
fsync on every write), so the head can be killed and started again on the same port
without losing actors, names or nodes. What was started is written to
DATA_DIR/cluster.json, so another process (the CLI, a drill) can ``load`` the cluster,
kill and restart its nodes, and ``down`` stops exactly what it lists.

This module never imports Ray: questions to the GCS go through a child process
(``python -m tokpay.localcluster ADDRESS``), so the caller may be a Ray driver of
another cluster, and a dead head cannot wedge it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, TypedDict

import msgspec

from tokpay.actors.naming import NODE_RESOURCE_PREFIX, node_resource
from tokpay.localserver import session_pids

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "cluster"
STATE_FILE_NAME = "cluster.json"
STATE_VERSION = 1
HEAD_NAME = "n0"
MAX_NODES = 16
"""Same prefix as in cluster/*.sh: node NAME offers ``tokpay_node_NAME`` (1000 units)."""
NODE_CPUS = 2
OBJECT_STORE_BYTES = 100 * 1024 * 1024
STORAGE_NAMESPACE = "tokpay"
RAY_TEMP_ROOT = Path("/tmp")
"""Ray puts Unix sockets under its temp dir and their paths may not exceed 107 bytes, so
the nodes' temp dirs are reached through a short link here into DATA_DIR/ray."""
FIXED_PORT_RANGE = (20000, 32000)
"""GCS, Redis and Ray Client ports come from below the kernel's ephemeral range, so a
port freed by a dead head is not taken by an outgoing connection before it restarts."""
MAX_PORT_ATTEMPTS = 200

REDIS_START_TIMEOUT_SECONDS = 20.0
NODE_START_TIMEOUT_SECONDS = 90.0
STOP_GRACE_SECONDS = 15.0
KILL_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 20.0
PROBE_RPC_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25
CLOCK_SLACK_MS = 1000
"""A restarted node counts as up once the GCS lists it as registered after the launch
(less this slack); an entry from before is its previous life, not yet declared dead."""
LOG_TAIL_CHARS = 3000
RAY_START_DONE = "Ray runtime started."
"""What ``ray start`` logs once it has set the node up. It still talks to the GCS for a
moment after the raylet registered; a head killed in that window makes it give up."""

Role = Literal["head", "worker"]
SettingValue = str | int | float | bool


class ClusterError(RuntimeError):
    """The cluster did not do what was asked (start, stop, find a node)."""


class ProcessRecord(TypedDict):
    pid: int | None
    """Session leader; every process of the session has this session id."""
    pid_start: int | None
    """The leader's start time (/proc clock ticks), so a reused pid is never taken for it."""
    argv: list[str]
    log: str


class RedisRecord(ProcessRecord):
    port: int
    data_dir: str


class NodeRecord(ProcessRecord):
    name: str
    role: Role
    resource: str
    data_dir: str
    ray_temp_dir: str


class ClusterStateFile(TypedDict):
    version: int
    gcs_address: str
    gcs_port: int
    ray_client_port: int
    auth_token_path: str
    ray_temp_link: str
    redis: RedisRecord
    nodes: dict[str, NodeRecord]
    services: dict[str, ProcessRecord]
    settings: dict[str, SettingValue]


class _RayNode(msgspec.Struct):
    """One entry of the GCS node table, as the probe child process reports it."""

    names: list[str]
    alive: bool
    start_time_ms: int


def node_name(index: int) -> str:
    return f"n{index}"


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
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
        self.data_dir = data_dir.resolve()
        self.node_count = nodes
        self.settings: dict[str, SettingValue] = {}
        """Free-form values kept with the cluster (the CLI stores its ports and sizes)."""
        self._requested_gcs_port = gcs_port
        self._requested_redis_port = redis_port
        self._state: ClusterStateFile | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- state -------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE_NAME

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @classmethod
    def load(cls, data_dir: Path) -> LocalCluster:
        """The cluster recorded in DATA_DIR/cluster.json (running or not)."""
        path = data_dir.resolve() / STATE_FILE_NAME
        try:
            state = msgspec.json.decode(path.read_bytes(), type=ClusterStateFile)
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {data_dir}: {path} does not exist") from None
        except msgspec.ValidationError as error:
            raise ClusterError(f"{path} is not a cluster state file: {error}") from None
        if state["version"] != STATE_VERSION:
            raise ClusterError(f"{path} has version {state['version']}, not {STATE_VERSION}")
        cluster = cls(
            data_dir,
            nodes=len(state["nodes"]),
            gcs_port=state["gcs_port"],
            redis_port=state["redis"]["port"],
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
        data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
        _write_atomically(self.state_path, data)

    @property
    def ray_address(self) -> str:
        """The GCS address drivers attach to: ``ray.init(address=...)``."""
        return self._require_state()["gcs_address"]

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

    # -- up and down -------------------------------------------------------------------

    def up(self) -> None:
        """Start Redis, the head and the worker nodes; return once Ray lists all alive.

        On any failure everything started so far is stopped again and ClusterError
        says which part failed, with the tail of its log.
        """
        if self.state_path.exists() and self._anything_running(LocalCluster.load(self.data_dir)):
            raise ClusterError(f"a cluster from {self.state_path} is still running; down() it")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        gcs_port = self._requested_gcs_port or _free_fixed_port()
        redis_port = self._requested_redis_port or _free_fixed_port(exclude={gcs_port})
        client_port = _free_fixed_port(exclude={gcs_port, redis_port})
        link = self._link_ray_temp_dir()
        names = [node_name(index) for index in range(self.node_count)]
        self._state = ClusterStateFile(
            version=STATE_VERSION,
            gcs_address=f"127.0.0.1:{gcs_port}",
            gcs_port=gcs_port,
            ray_client_port=client_port,
            auth_token_path=str(self._ensure_auth_token()),
            ray_temp_link=str(link),
            redis=RedisRecord(
                pid=None,
                pid_start=None,
                argv=[str(SCRIPTS_DIR / "redis.sh"), str(self.data_dir / "redis"), str(redis_port)],
                log=str(self.logs_dir / "redis.log"),
                port=redis_port,
                data_dir=str(self.data_dir / "redis"),
            ),
            nodes={name: self._node_record(name, link, gcs_port, redis_port) for name in names},
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
            _stop_sessions(stage)
        for process in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=KILL_TIMEOUT_SECONDS)
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
        return _session_running(self._node(name))

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
        record = self._node(name)
        _kill_session(record)
        self._reap(name)
        self._save()

    def start_node(self, name: str) -> None:
        """Start a killed node again (same name, resources, data dir, ports); wait for it.

        The head comes back on the same GCS port, reloads the cluster from Redis, and
        the worker nodes' raylets reconnect to it.
        """
        record = self._node(name)
        if _session_running(record):
            raise ClusterError(f"node {name} is running; kill_node({name!r}) first")
        if record["role"] == "head" and not _session_running(self._require_state()["redis"]):
            raise ClusterError("Redis is not running: the head would have no GCS storage")
        self._start_nodes([name])

    def _node_record(self, name: str, link: Path, gcs_port: int, redis_port: int) -> NodeRecord:
        role: Role = "head" if name == HEAD_NAME else "worker"
        if role == "head":
            argv = [str(SCRIPTS_DIR / "head.sh"), f"127.0.0.1:{redis_port}", name]
        else:
            argv = [str(SCRIPTS_DIR / "worker.sh"), f"127.0.0.1:{gcs_port}", name]
        return NodeRecord(
            pid=None,
            pid_start=None,
            argv=argv,
            log=str(self.logs_dir / f"{name}.log"),
            name=name,
            role=role,
            resource=node_resource(name),
            data_dir=str(self.data_dir / "nodes" / name),
            ray_temp_dir=str(link / name),
        )

    def _start_nodes(self, names: list[str]) -> None:
        state = self._require_state()
        launched_ms = int(time.time() * 1000)
        log_offsets: dict[str, int] = {}
        for name in names:
            record = state["nodes"][name]
            Path(record["data_dir"]).mkdir(parents=True, exist_ok=True)
            Path(record["ray_temp_dir"]).mkdir(parents=True, exist_ok=True)
            log_offsets[name] = _log_size(record)
            self._launch(name, record, self._node_env(record), cwd=Path(record["data_dir"]))
        self._save()
        self._wait_alive(log_offsets, launched_ms)

    def _node_env(self, record: NodeRecord) -> dict[str, str]:
        state = self._require_state()
        ray_bin = Path(sys.executable).parent / "ray"
        env = _inherited_env()
        env.update(
            {
                "TOKPAY_DATA_DIR": str(self.data_dir),
                "TOKPAY_RAY_TEMP_DIR": record["ray_temp_dir"],
                "TOKPAY_RAY_BIN": str(ray_bin) if ray_bin.exists() else "ray",
                "TOKPAY_NUM_CPUS": str(NODE_CPUS),
                "TOKPAY_OBJECT_STORE_BYTES": str(OBJECT_STORE_BYTES),
                "TOKPAY_GCS_PORT": str(state["gcs_port"]),
                "TOKPAY_RAY_CLIENT_PORT": str(state["ray_client_port"]),
                "TOKPAY_STORAGE_NAMESPACE": STORAGE_NAMESPACE,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": state["auth_token_path"],
            }
        )
        return env

    def _wait_alive(self, log_offsets: dict[str, int], launched_ms: int) -> None:
        """Until the GCS lists every node alive, registered after ``launched_ms``, and the
        node's ``ray start`` logged (past its log offset) that it is done."""
        names = list(log_offsets)
        deadline = time.monotonic() + NODE_START_TIMEOUT_SECONDS
        while True:
            for name in names:
                if not _session_running(self._node(name)):
                    raise ClusterError(
                        f"node {name} exited while starting:\n{_log_tail(self._node(name))}"
                    )
            up = {
                name
                for name, offset in log_offsets.items()
                if RAY_START_DONE in _log_since(self._node(name), offset)
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
                tails = "\n".join(f"--- {n}:\n{_log_tail(self._node(n))}" for n in missing)
                raise ClusterError(
                    f"nodes {missing} not alive in Ray after {NODE_START_TIMEOUT_SECONDS:.0f} s"
                    f"\n{tails}"
                )
            time.sleep(POLL_SECONDS)

    def _ray_node_table(self) -> list[_RayNode] | None:
        """The GCS's node table, or None if the GCS does not answer."""
        state = self._require_state()
        if not _port_open(state["gcs_port"]):
            return None
        env = _inherited_env()
        env.update(self.driver_env())
        try:
            result = subprocess.run(
                [sys.executable, "-m", "tokpay.localcluster", state["gcs_address"]],
                capture_output=True,
                timeout=PROBE_TIMEOUT_SECONDS,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        if result.returncode != 0 or not result.stdout.strip():
            return None
        return msgspec.json.decode(result.stdout.splitlines()[-1], type=list[_RayNode])

    # -- Redis -------------------------------------------------------------------------

    def _start_redis(self) -> None:
        state = self._require_state()
        record = state["redis"]
        Path(record["data_dir"]).mkdir(parents=True, exist_ok=True)
        self._launch("redis", record, _inherited_env(), cwd=self.data_dir)
        self._save()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
        # Ours answers with its own pid: a Redis of someone else's on the port would not.
        while _redis_server_pid(record["port"]) != record["pid"]:
            if not _session_running(record):
                raise ClusterError(f"Redis exited while starting:\n{_log_tail(record)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"Redis not serving in time:\n{_log_tail(record)}")
            time.sleep(POLL_SECONDS)

    # -- services ----------------------------------------------------------------------

    def spawn_service(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Run ``argv`` in a session of its own (logs in DATA_DIR/logs/NAME.log); its pid.

        The process gets this process's environment, then ``driver_env()``, then ``env``.
        """
        state = self._require_state()
        if name in state["nodes"] or name == "redis":
            raise ClusterError(f"{name!r} names a node or Redis; pick another service name")
        previous = state["services"].get(name)
        if previous is not None and _session_running(previous):
            raise ClusterError(f"service {name} is running (pid {previous['pid']})")
        record = ProcessRecord(
            pid=None, pid_start=None, argv=list(argv), log=str(self.logs_dir / f"{name}.log")
        )
        state["services"][name] = record
        full_env = _inherited_env()
        full_env.update(self.driver_env())
        full_env.update(env)
        pid = self._launch(name, record, full_env, cwd=self.data_dir)
        self._save()
        return pid

    def service_alive(self, name: str) -> bool:
        record = self._require_state()["services"].get(name)
        return record is not None and _session_running(record)

    def kill_service(self, name: str) -> None:
        """SIGKILL every process of the service's session."""
        record = self._require_state()["services"].get(name)
        if record is None:
            raise ClusterError(f"no service {name!r}; services are {sorted(self.services)}")
        _kill_session(record)
        self._reap(name)
        self._save()

    # -- processes ---------------------------------------------------------------------

    def _launch(self, name: str, record: ProcessRecord, env: dict[str, str], cwd: Path) -> int:
        """Start ``record['argv']`` as the leader of a new session; record its pid."""
        self._reap(name)
        with Path(record["log"]).open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {record['argv']}\n".encode())
            log.flush()
            process = subprocess.Popen(
                record["argv"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self._children[name] = process
        record["pid"] = process.pid
        record["pid_start"] = _start_ticks(process.pid)
        if record["pid_start"] is None:
            process.wait()
            raise ClusterError(f"{name} exited at once:\n{_log_tail(record)}")
        return process.pid

    def _reap(self, name: str) -> None:
        """Collect the exit status of a child of ours that was killed (no zombie left)."""
        process = self._children.pop(name, None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=KILL_TIMEOUT_SECONDS)

    @staticmethod
    def _anything_running(cluster: LocalCluster) -> bool:
        state = cluster._require_state()
        records: list[ProcessRecord] = [state["redis"], *state["nodes"].values()]
        records.extend(state["services"].values())
        return any(_session_running(record) for record in records)

    # -- files -------------------------------------------------------------------------

    def _ensure_auth_token(self) -> Path:
        """The cluster's own Ray auth token (made once, readable by this user only)."""
        path = self.data_dir / "auth_token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as token_file:
                token_file.write(secrets.token_hex(32))
        return path

    def _link_ray_temp_dir(self) -> Path:
        target = self.data_dir / "ray"
        target.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        link = RAY_TEMP_ROOT / f"tokpay-{digest}"
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return link
        if link.exists() or link.is_symlink():
            raise ClusterError(f"{link} exists and is not a link to {target}")
        link.symlink_to(target, target_is_directory=True)
        return link


def _inherited_env() -> dict[str, str]:
    # A RAY_ADDRESS of the caller would point `ray start` elsewhere, and a RAY_AUTH_TOKEN
    # would win over the cluster's token file.
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    # Field 22 of the stat line; fields[0] here is field 3 (the state).
    return int(fields[19])


def _session_members(record: ProcessRecord) -> list[int]:
    pid, pid_start = record["pid"], record["pid_start"]
    if pid is None:
        return []
    current = _start_ticks(pid)
    if current is not None and current != pid_start:
        # The pid names another process now. Linux never hands out a pid that is still
        # some session's id, so no process of the recorded session is left.
        return []
    return session_pids(pid)


def _session_running(record: ProcessRecord) -> bool:
    return bool(_session_members(record))


def _kill_session(record: ProcessRecord) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
    while members := _session_members(record):
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {members} of session {record['pid']} survive SIGKILL")
        time.sleep(0.05)
    _reap_if_child(record["pid"])


def _reap_if_child(pid: int | None) -> None:
    """Collect a dead session leader if it is a child of this process (maybe started by
    another LocalCluster object here), so no zombie of it stays behind."""
    if pid is None:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stop_sessions(records: list[ProcessRecord]) -> None:
    """SIGTERM each session's leader, give them all a grace period, SIGKILL the rest."""
    running = [record for record in records if _session_running(record)]
    for record in running:
        pid = record["pid"]
        if pid is not None and _start_ticks(pid) == record["pid_start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(_session_running(r) for r in running) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for record in running:
        _kill_session(record)


def _log_tail(record: ProcessRecord) -> str:
    try:
        return Path(record["log"]).read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as error:
        return f"(no log: {error})"


def _log_size(record: ProcessRecord) -> int:
    try:
        return Path(record["log"]).stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(record: ProcessRecord, offset: int) -> str:
    with Path(record["log"]).open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _free_fixed_port(exclude: set[int] | None = None) -> int:
    low, high = FIXED_PORT_RANGE
    for _ in range(MAX_PORT_ATTEMPTS):
        port = random.randint(low, high)
        if exclude and port in exclude:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free port in {FIXED_PORT_RANGE} after {MAX_PORT_ATTEMPTS} tries")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _redis_server_pid(port: int) -> int | None:
    """The pid of the Redis serving on ``port`` (from INFO), or None if none answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.removeprefix("process_id:"))
    return None


def _print_ray_node_table(address: str) -> None:
    """Child-process side of ``_ray_node_table``: the GCS node table as JSON on stdout."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

    infos = GcsClient(address=address).get_all_node_info(timeout=PROBE_RPC_TIMEOUT_SECONDS)
    table: list[dict[str, Any]] = []
    for info in infos.values():
        names = [
            resource.removeprefix(NODE_RESOURCE_PREFIX)
            for resource in info.resources_total
            if resource.startswith(NODE_RESOURCE_PREFIX)
        ]
        table.append(
            {
                "names": names,
                "alive": info.state == GcsNodeInfo.ALIVE,
                "start_time_ms": info.start_time_ms,
            }
        )
    print(json.dumps(table))


if __name__ == "__main__":
    _print_ray_node_table(sys.argv[1])
