"""The gateway's app for a --netns cluster, whose drivers attach through a Ray node of
their own (the drivers' node, in the root namespace, tokpay.cluster.nodes).

Ray attaches a driver through the node it names by address, and without one through the
head's: wrong for a process outside the head's namespace, since Ray's workers call a
driver back at its node's address. This factory joins Ray with TOKPAY_RAY_NODE_IP in each
server worker (after the server forked it), then builds the usual gateway app, whose
start-up finds Ray joined. A ``TOKPAY_RAY_NODE_IP`` setting read by tokpay.gateway would
make this module unnecessary.
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp

from tokpay import gateway
from tokpay.cluster.deploy import join


def app_from_environment() -> ASGIApp:
    join(os.environ["TOKPAY_RAY_ADDRESS"], node_ip=os.environ["TOKPAY_RAY_NODE_IP"])
    return gateway.app_from_environment()
