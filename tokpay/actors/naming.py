"""Names under which TokPay's actors register, so any process can find them."""

NAMESPACE = "tokpay"


def shard_actor_name(shard: int) -> str:
    return f"tokpay-shard-{shard}"


COORDINATOR_NAME = "tokpay-coordinator"

CONTROLLER_NAME = "tokpay-controller"
"""The detached controller of a replicated cluster (absent in the single-node default)."""

NODE_RESOURCE_PREFIX = "tokpay_node_"
"""Each node offers ``tokpay_node_<name>`` (cluster/*.sh); replicas are pinned with it."""


def node_resource(node: str) -> str:
    return f"{NODE_RESOURCE_PREFIX}{node}"
