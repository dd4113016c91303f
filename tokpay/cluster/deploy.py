"""The Ray-driver side of the cluster commands: join a cluster, deploy TokPay on it.

Only these functions import Ray, and only when called: the rest of tokpay.cluster
runs in processes that must never become a Ray driver (a test process with a private
Ray, a drill that a dead head must not wedge).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

READY_TIMEOUT_SECONDS = 300.0


def join(
    address: str, auth_token_path: Path | None = None, node_ip: str | None = None
) -> ModuleType:
    """Make this process a Ray driver of the cluster at ``address`` (once); the ray module.

    Ray reads its auth settings from this process's environment when it is imported, so
    they are set here first: token mode (unless the caller chose otherwise, or a token
    file is given, which forces it) and the cluster's own token file. ``node_ip`` (else
    TOKPAY_RAY_NODE_IP, else Ray's choice, the head's node): the address of the node
    on this machine to attach through, which must be this process's own address, since
    Ray's workers call a driver back there (a --netns cluster's drivers' node).
    """
    node_ip = node_ip or os.environ.get("TOKPAY_RAY_NODE_IP") or None
    if auth_token_path is None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(auth_token_path)
    import ray

    from tokpay.actors.naming import NAMESPACE

    if not ray.is_initialized():
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            _node_ip_address=node_ip,
        )
    return ray


def deploy(
    address: str,
    nodes: list[str],
    shards: int,
    fsync: bool,
    auth_token_path: Path | None = None,
    *,
    recover: bool = False,
    node_ip: str | None = None,
) -> Any:
    """Start (or find) the controller and wait until every group has a primary and a backup.

    ``nodes[0]`` is the head: the controller lives there (with the GCS it keeps its
    state in, so it comes back with the head). Returns the controller's status. With
    no shard map in the GCS, replica data on the nodes is refused, unless ``recover``:
    then the map is rebuilt from the replicas' proofs (tokpay.actors.recovery).
    ``node_ip``: as for ``join``.
    """
    ray = join(address, auth_token_path, node_ip)
    from tokpay.actors.controller import Controller
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE, node_resource

    controller = Controller.options(  # type: ignore[attr-defined]
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={node_resource(nodes[0]): 1},
    ).remote(shards, nodes, fsync)
    # Only a recovery passes the flag: a controller deployed by an older TokPay (Ray
    # restarts it with the code it was created with) still resumes a plain restart.
    call = controller.bootstrap.remote(recover=True) if recover else controller.bootstrap.remote()
    return ray.get(call, timeout=READY_TIMEOUT_SECONDS)


def controller_status(
    address: str, auth_token_path: Path | None = None, node_ip: str | None = None
) -> Any:
    """The controller's status: nodes, and every group's epoch, primary and backup."""
    ray = join(address, auth_token_path, node_ip)
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE

    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    return ray.get(controller.status.remote(), timeout=30)
