"""Network faults of a --netns cluster (tokpay.cluster.netns), and the drills that use them.

- ``partition``: one node cut off from every other, both ways: its cable's root end
  (``tpn-v<i>``, a port of the bridge) set down; healed by setting it up.
- ``partition-oneway``: the node hears nothing but can still send: an nftables table
  (``tpn_oneway``) inside the node's own namespace drops every packet arriving on its
  veth (ARP is not filtered, so its sends keep flowing); healed by deleting the table.
- ``slow-link``: delay and loss on the path between a shard's primary and its backup
  only: on each of the two root veth ends, an HTB class behind a u32 filter on the other
  node's source address; healed by deleting the root qdisc (and the loss table). The
  class leads to ``tc netem`` (fixed delay, random loss) where the kernel has it; a
  kernel without ``sch_netem`` (this project's CI machine) gets the same path slowed by
  what it does have: the class capped at ``SLOW_RATE`` with a byte FIFO holding at most
  ``SLOW_QUEUE_BYTES`` (queueing delay up to ~200 ms, tail drops beyond), and
  ``SLOW_LOSS_PERCENT`` of the packets from the other node dropped at random by an nftables
  table inside each node's namespace.

The drill cuts the node holding a shard primary (a worker when one holds any) for
CUT_SECONDS, several leases, under the usual drill load, heals it, restarts the node's
Ray processes if the GCS declared it dead meanwhile (as a supervisor would), and audits.
Only the cluster's own ``tpn`` interfaces and namespaces are touched.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tokpay.actors.timing import LEASE_MARGIN_SECONDS, LEASE_SECONDS
from tokpay.cluster import netns
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.local import LocalCluster
from tokpay.testing.nemesis import choose_victim

PARTITION_TARGETS = ("partition", "partition-oneway", "slow-link")
CUT_SECONDS = 5.0
"""How long a fault lasts: several leases, so an isolated primary's lease runs out."""
SLOW_DELAY = "200ms"
SLOW_LOSS_PERCENT = 5
SLOW_RATE = "512kbit"
SLOW_QUEUE_BYTES = 12_800
"""200 ms of SLOW_RATE: the most a packet waits in the queue of the path without netem."""
SLOW_TABLE = "tpn_slow"
ONEWAY_TABLE = "tpn_oneway"
COMMAND_TIMEOUT_SECONDS = 20.0
HEALED_SETTLE_SECONDS = 20.0
"""How long a healed node must then stay alive before the drill trusts it (the GCS may
still declare it dead and its raylet then exits: the drill restarts it, as a supervisor
would)."""
HEALED_ALIVE_WAIT_SECONDS = 3.0
"""After healing, how long the cut node may take to show up alive in Ray again before
it counts as declared dead (its raylet exits then) and is restarted. A node the GCS
declared dead never comes back by itself, so this is short."""

if CUT_SECONDS <= 2 * (LEASE_SECONDS + LEASE_MARGIN_SECONDS):
    raise ValueError("a partition must outlast an isolated primary's lease several times")


def _run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> None:
    result = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")


def cut(index: int) -> None:
    """Node ``index`` loses its cable: nothing in or out."""
    netns.ip("link", "set", netns.root_veth(index), "down")


def uncut(index: int) -> None:
    netns.ip("link", "set", netns.root_veth(index), "up")


def cut_inbound(index: int) -> None:
    """Node ``index`` receives no IP packet over its veth; what it sends still leaves."""
    rules = (
        f"table inet {ONEWAY_TABLE} {{\n chain input {{\n"
        "  type filter hook input priority 0; policy accept;\n"
        f'  iifname "{netns.node_veth(index)}" drop\n }}\n}}\n'
    )
    _run(["ip", "netns", "exec", netns.namespace(index), "nft", "-f", "-"], stdin=rules)


def uncut_inbound(index: int) -> None:
    _run(
        ["ip", "netns", "exec", netns.namespace(index), "nft", "delete", "table", "inet",
         ONEWAY_TABLE],
        check=False,
    )  # fmt: skip


def slow_path(a: int, b: int, *, netem: bool) -> None:
    """Delay and loss on the traffic between nodes ``a`` and ``b`` (each way): netem, or a
    capped rate with a bounded queue plus nftables' random drop (the module docstring)."""
    for here, there in ((a, b), (b, a)):
        device = netns.root_veth(here)
        # Into ``here``'s node: from ``there`` through the slow class, the rest unshaped.
        tc = ["tc"]
        _run([*tc, "qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "10"])
        _run([*tc, "class", "add", "dev", device, "parent", "1:", "classid", "1:10",
              "htb", "rate", "10gbit"])  # fmt: skip
        rate = "10gbit" if netem else SLOW_RATE
        _run([*tc, "class", "add", "dev", device, "parent", "1:", "classid", "1:20",
              "htb", "rate", rate, "ceil", rate])  # fmt: skip
        leaf = (
            ["netem", "delay", SLOW_DELAY, "loss", f"{SLOW_LOSS_PERCENT}%"]
            if netem
            else ["bfifo", "limit", str(SLOW_QUEUE_BYTES)]
        )
        _run([*tc, "qdisc", "add", "dev", device, "parent", "1:20", "handle", "20:", *leaf])
        _run([*tc, "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1",
              "u32", "match", "ip", "src", f"{netns.node_address(there)}/32", "flowid", "1:20"])  # fmt: skip
        if not netem:
            rules = (
                f"table inet {SLOW_TABLE} {{\n chain input {{\n"
                "  type filter hook input priority 0; policy accept;\n"
                f"  ip saddr {netns.node_address(there)} "
                f"numgen random mod 100 < {SLOW_LOSS_PERCENT} drop\n }}\n}}\n"
            )
            _run(["ip", "netns", "exec", netns.namespace(here), "nft", "-f", "-"], stdin=rules)


def unslow_path(a: int, b: int) -> None:
    for index in (a, b):
        _run(["tc", "qdisc", "del", "dev", netns.root_veth(index), "root"], check=False)
        _run(
            ["ip", "netns", "exec", netns.namespace(index), "nft", "delete", "table", "inet",
             SLOW_TABLE],
            check=False,
        )  # fmt: skip


def has_netem(pair: tuple[int, int]) -> bool:
    """Whether this kernel takes ``tc netem`` (tried on the path itself and undone at once,
    before any load); without it ``slow_path`` slows the path by rate, queue and drops."""
    try:
        slow_path(*pair, netem=True)
    except ClusterError:
        return False
    finally:
        unslow_path(*pair)
    return True


def require_netns(cluster: LocalCluster) -> None:
    if not cluster.netns:
        raise ClusterError(
            "partition drills need a cluster started with `tokpay cluster up --netns` "
            f"(the one in {cluster.data_dir} runs every node on the machine's own network)"
        )


def partition_kill(
    cluster: LocalCluster, target: str, status: dict[str, Any]
) -> tuple[Callable[[], str], Callable[[], None]]:
    """(kill, recover) for a partition drill on ``cluster`` (see the module docstring).

    ``kill`` applies the fault, keeps it CUT_SECONDS, heals it, and says what it did;
    ``recover`` restarts the faulted node's Ray processes if they died meanwhile."""
    require_netns(cluster)
    if target == "slow-link":
        groups = [g for g in status["groups"] if g["group"] != "coordinator"]
        g = random.choice(groups)
        pair = (netns.node_index(g["primary"]["node"]), netns.node_index(g["backup"]["node"]))
        netem = has_netem(pair)
        apply: Callable[[], None] = lambda: slow_path(*pair, netem=netem)  # noqa: E731
        heal: Callable[[], None] = lambda: unslow_path(*pair)  # noqa: E731
        slowed = (
            f"netem delay {SLOW_DELAY}"
            if netem
            else f"no netem here: {SLOW_RATE}, queue <= {SLOW_QUEUE_BYTES} bytes"
        )
        what = f"{g['group']} n{pair[0]}<->n{pair[1]}: {slowed}, loss {SLOW_LOSS_PERCENT}%"
        nodes: list[str] = []
    else:
        _, node = choose_victim("primary", status)
        index = netns.node_index(node)
        oneway = target == "partition-oneway"
        apply = (lambda: cut_inbound(index)) if oneway else (lambda: cut(index))
        heal = (lambda: uncut_inbound(index)) if oneway else (lambda: uncut(index))
        what = f"node {node} ({'inbound dropped' if oneway else 'cut off both ways'})"
        nodes = [node]

    def kill() -> str:
        try:
            apply()
            time.sleep(CUT_SECONDS)
        finally:
            heal()
        return f"{what} for {CUT_SECONDS:.0f} s"

    def recover() -> None:
        for node in nodes:
            restart_if_dead(cluster, node)

    return kill, recover


def restart_if_dead(cluster: LocalCluster, node: str) -> None:
    """Restart ``node`` unless it is alive in Ray and stays so: a node cut off longer than
    the GCS's health checks is declared dead, and its raylet exits once it hears so, which
    can be seconds after the heal (seen here: 20 s after the cut began)."""
    deadline = time.monotonic() + HEALED_ALIVE_WAIT_SECONDS
    while time.monotonic() < deadline and not cluster.node_alive(node):
        time.sleep(1.0)
    settled = time.monotonic() + HEALED_SETTLE_SECONDS
    while cluster.node_alive(node) and cluster.node_running(node):
        if time.monotonic() > settled:
            return
        time.sleep(1.0)
    cluster.kill_node(node)
    cluster.start_node(node)
