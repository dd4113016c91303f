"""The single-node ledger of ``tokpay serve``: a private Ray with the shard actors and
the coordinator on it, the dev OpenID provider, and the gateway as a child process.

Settings reach the gateway's processes through the environment given to its child
process (never by changing this process's own environment).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import tokpay
from tokpay.settings import Settings

RAY_OBJECT_STORE_BYTES = 200 * 1024 * 1024
RAY_CPUS = 2
DEV_IDP_START_SECONDS = 15.0
DEV_IDP_STOP_SECONDS = 10.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DATA_DIR_MODE = 0o700


@dataclass
class LocalLedger:
    """The ledger this process started on its own Ray, and what its gateway needs."""

    handles: Any
    """Keep it: the actors live only while their owner holds a reference."""
    gateway_env: dict[str, str]


def start_local_ledger(data_dir: Path, shard_count: int, fsync: bool) -> LocalLedger:
    """Start a private Ray here and the shard actors and coordinator on it (each
    recovering from ``data_dir``); write the Ray address to DATA_DIR/run/ray-address
    for client scripts."""
    import ray

    from tokpay.actors.deploy import start_ledger, use_loopback_ray
    from tokpay.actors.naming import NAMESPACE

    # The ledger's log and the web app's sessions and addresses: this user's alone.
    data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
    data_dir.chmod(DATA_DIR_MODE)

    # The single-node Ray serves this machine alone: every server of it on loopback.
    use_loopback_ray()
    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        namespace=NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
        # TokPay's /metrics carries the shards' numbers: Ray's per-node exporter is not
        # started at all (the raylet passes --disable-metrics-collection to its agent).
        _system_config={"enable_metrics_collection": False},
    )
    handles = start_ledger(data_dir, shard_count, fsync=fsync)
    metrics_dir = data_dir / "run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    ray_address = ray.get_runtime_context().gcs_address
    # Client scripts find this server's Ray cluster here even when others run too.
    (data_dir / "run" / "ray-address").write_text(ray_address)
    env = dict(os.environ) | {
        "TOKPAY_RAY_ADDRESS": ray_address,
        "TOKPAY_DATA_DIR": str(data_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    return LocalLedger(handles=handles, gateway_env=env)


def stop_local_ledger(ledger: LocalLedger) -> None:
    import ray

    ledger.handles = None
    ray.shutdown()


@dataclass
class DevIdentityProvider:
    """The dev OpenID provider (npm ``oidc-provider``): it accepts any login."""

    process: subprocess.Popen[bytes]
    issuer: str
    gateway_env: dict[str, str]
    """What the gateway needs to use it as its issuer."""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=DEV_IDP_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()


class NoDevIdentityProvider(RuntimeError):
    """The dev OpenID provider cannot run here, or did not start."""


def start_dev_identity_provider(host: str, port: int) -> DevIdentityProvider | None:
    """Start the dev OpenID provider unless an issuer is configured (then None).

    It accepts any login, so it binds to 127.0.0.1 only, and refuses to start for a
    gateway bound beyond loopback (``host``), whose users need a real provider. The
    gateway at ``host:port`` is its one client; its secret reaches the provider
    through the environment, never the command line (which any local user can read).
    """
    settings = Settings()
    if settings.oidc_issuer:
        return None
    if host not in LOOPBACK_HOSTS:
        raise NoDevIdentityProvider(
            f"--host {host} serves other machines, and the dev login lets anyone sign in "
            "as anyone. Set TOKPAY_OIDC_ISSUER (and TOKPAY_OIDC_CLIENT_SECRET) to a real "
            "OpenID provider, or serve on 127.0.0.1."
        )
    script = files("tokpay.web") / "devidp" / "provider.mjs"
    node = shutil.which("node")
    # The npm packages are installed in the checkout (make setup), beside the package.
    if node is None or not (Path(tokpay.__file__).parent.parent / "node_modules").is_dir():
        raise NoDevIdentityProvider(
            "No issuer configured and no Node/npm packages for the dev login."
        )
    idp_port = settings.dev_oidc_port
    if idp_port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            idp_port = sock.getsockname()[1]
    issuer = f"http://127.0.0.1:{idp_port}"
    secret = secrets.token_urlsafe(24)
    hosts = dict.fromkeys([host, "127.0.0.1", "localhost"])
    redirects = ",".join(f"http://{h}:{port}/auth/callback" for h in hosts)
    after_logout = ",".join(f"http://{h}:{port}/" for h in hosts)
    process = subprocess.Popen(
        [node, str(script), issuer, settings.oidc_client_id, redirects, after_logout],
        env=dict(os.environ) | {"TOKPAY_DEVIDP_CLIENT_SECRET": secret},
    )
    deadline = time.monotonic() + DEV_IDP_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", idp_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    if process.poll() is not None:
        raise NoDevIdentityProvider("The dev OpenID provider did not start; login will not work.")
    env = {
        "TOKPAY_OIDC_ISSUER": issuer,
        "TOKPAY_OIDC_CLIENT_SECRET": secret,
        "TOKPAY_OIDC_DEV": "true",
    }
    return DevIdentityProvider(process=process, issuer=issuer, gateway_env=env)
