"""Ports for the processes of a local cluster or server.

A cluster's fixed ports (GCS, Redis, Ray Client) come from below the kernel's ephemeral
range, so a port freed by a dead head is not taken by an outgoing connection before the
head restarts on it. Servers that never restart on the same port take any free one.
"""

from __future__ import annotations

import random
import socket

from tokpay.cluster.errors import ClusterError

FIXED_PORT_RANGE = (20000, 32000)
MAX_PORT_ATTEMPTS = 200


def free_port() -> int:
    """A port free on loopback now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_fixed_port(exclude: set[int] | None = None) -> int:
    """A port free on every address now, from ``FIXED_PORT_RANGE``, not in ``exclude``."""
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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host``:``port`` (default loopback)."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0
