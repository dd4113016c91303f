"""Per-node network namespaces for a local cluster (``tokpay cluster up --netns``).

Each node n<i> runs in the network namespace ``tpn-n<i>`` with the address 10.77.0.(11+i)
on a veth pair whose root end (``tpn-v<i>``) is a port of the bridge ``tpn-br0``
(10.77.0.1 in the root namespace). Nodes reach each other, and the root namespace,
only over that bridge, as separate machines reach each other over a switch; cutting a
node's root veth end cuts that machine's cable (tokpay.testing.partition).

Only names starting with ``tpn`` and addresses in 10.77.0.0/24 are ever created or
removed: no other interface, route or firewall rule of the machine is touched. One
``--netns`` cluster at a time per machine (the names are fixed).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tokpay.cluster.errors import ClusterError

PREFIX = "tpn"
BRIDGE = f"{PREFIX}-br0"
SUBNET_PREFIX = "10.77.0."
PREFIX_LENGTH = 24
BRIDGE_ADDRESS = f"{SUBNET_PREFIX}1"
"""The root namespace's address on the bridge: where the gateway and CLI drivers live."""
FIRST_NODE_HOST = 11
"""Node n<i> gets 10.77.0.(FIRST_NODE_HOST + i)."""
MAX_NODES = 16
IP_TIMEOUT_SECONDS = 20.0
PROBE_NAMESPACE = f"{PREFIX}-probe"


def namespace(index: int) -> str:
    return f"{PREFIX}-n{index}"


def root_veth(index: int) -> str:
    """The node's cable as the root namespace sees it (a port of the bridge)."""
    return f"{PREFIX}-v{index}"


def node_veth(index: int) -> str:
    """The node's own end of its cable, inside its namespace."""
    return f"{PREFIX}-v{index}-ns"


def node_address(index: int) -> str:
    if not 0 <= index < MAX_NODES:
        raise ClusterError(f"a --netns cluster has at most {MAX_NODES} nodes, not index {index}")
    return f"{SUBNET_PREFIX}{FIRST_NODE_HOST + index}"


def node_index(name: str) -> int:
    """n3 -> 3."""
    if not (name.startswith("n") and name[1:].isdigit()):
        raise ClusterError(f"{name!r} is not a node name of a --netns cluster (n0, n1, ...)")
    return int(name[1:])


def exec_argv(index: int, argv: list[str]) -> list[str]:
    """``argv`` run inside node ``index``'s namespace. ``ip netns exec`` execs the
    command, so the pid (a session leader) is the same process."""
    return ["ip", "netns", "exec", namespace(index), *argv]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``ip`` command; ClusterError with its stderr if it fails and ``check``."""
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_SECONDS, check=False
    )
    if check and result.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def require_support() -> None:
    """Raise ClusterError saying why unless this process may create network namespaces,
    veth pairs and a bridge (root, ``ip`` with netns support)."""
    if shutil.which("ip") is None:
        raise ClusterError("--netns needs the `ip` command (iproute2), which is not on PATH")
    if os.geteuid() != 0:
        raise ClusterError("--netns needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`)")
    ip("netns", "del", PROBE_NAMESPACE, check=False)
    made = ip("netns", "add", PROBE_NAMESPACE, check=False)
    if made.returncode != 0:
        raise ClusterError(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    ip("netns", "del", PROBE_NAMESPACE)


def _link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def _namespaces() -> set[str]:
    listed = ip("netns", "list", check=False).stdout.splitlines()
    return {line.split()[0] for line in listed if line.strip()}


def create_network(nodes: int) -> None:
    """The bridge and one namespace per node, each with its veth pair, address, loopback
    and default route via the bridge. Refused if any of them exists already (another
    --netns cluster runs). On failure, whatever was made is removed again."""
    if _link_exists(BRIDGE) or any(namespace(i) in _namespaces() for i in range(nodes)):
        raise ClusterError(
            f"{BRIDGE} or a {PREFIX}-n* namespace exists: another --netns cluster runs on this "
            "machine (`tokpay cluster down` it first)"
        )
    try:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for index in range(nodes):
            _add_node(index)
    except BaseException:
        remove_network(nodes)
        raise


def _add_node(index: int) -> None:
    ns, root_end, node_end = namespace(index), root_veth(index), node_veth(index)
    ip("netns", "add", ns)
    ip("link", "add", root_end, "type", "veth", "peer", "name", node_end, "netns", ns)
    ip("link", "set", root_end, "master", BRIDGE)
    ip("link", "set", root_end, "up")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "addr", "add", f"{node_address(index)}/{PREFIX_LENGTH}", "dev", node_end)
    ip("-n", ns, "link", "set", node_end, "up")
    ip("-n", ns, "route", "add", "default", "via", BRIDGE_ADDRESS)


def remove_network(nodes: int) -> None:
    """Remove the namespaces, veth pairs and bridge of a cluster of ``nodes`` nodes
    (whatever of them exists). Run it after the nodes' processes are gone: a namespace
    lives on while a process is in it."""
    present = _namespaces()
    for index in range(nodes):
        if _link_exists(root_veth(index)):
            ip("link", "del", root_veth(index), check=False)
        if namespace(index) in present:
            ip("netns", "del", namespace(index), check=False)
    if _link_exists(BRIDGE):
        ip("link", "del", BRIDGE, check=False)


def network_present(nodes: int) -> bool:
    """Whether the bridge and every node's namespace exist."""
    present = _namespaces()
    return _link_exists(BRIDGE) and all(namespace(i) in present for i in range(nodes))


def leftovers() -> list[str]:
    """Every ``tpn`` namespace and link on the machine (after a down: none)."""
    links = ip("-o", "link", "show", check=False).stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in links if ":" in line]
    return sorted(
        [n for n in _namespaces() if n.startswith(PREFIX)]
        + [n for n in names if n.startswith(PREFIX)]
    )
