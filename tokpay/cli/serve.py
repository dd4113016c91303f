"""``tokpay serve`` (the single-node ledger and its gateway) and ``tokpay gateway``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokpay.wal.distrust import UntrustedCopy, check_trusted
from tokpay.wal.distrust import trust_after_reboot as trust_after_reboot_of

console = Console(stderr=True)


def _check_copies(data_dir: Path, trust_after_reboot: bool) -> None:
    """Refuse to start on a copy whose write or fsync failed (``tokpay.wal.distrust``)."""
    for copy in sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []:
        if trust_after_reboot and trust_after_reboot_of(copy):
            console.print(
                f"[yellow]{copy}: opened after a failed fsync in an earlier boot[/yellow]"
            )
        check_trusted(copy)


class Server(StrEnum):
    uvicorn = "uvicorn"
    granian = "granian"


def serve(
    host: Annotated[str, typer.Option(help="Address the gateway binds to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP gateway.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Where logs and snapshots live; start again on it to resume.")
    ] = Path("var/tokpay"),
    shards: Annotated[
        int | None,
        typer.Option(help="Shard count, fixed when the data directory is first used (default 4)."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Gateway processes.")] = 2,
    server: Annotated[
        Server, typer.Option(help="ASGI server running the gateway.")
    ] = Server.granian,
    fsync: Annotated[
        bool,
        typer.Option(help="fsync every log batch. --no-fsync voids durability; benchmarks only."),
    ] = True,
    trust_after_reboot: Annotated[
        bool,
        typer.Option(
            help="Open copies whose write or fsync failed in an earlier boot (the disk now "
            "holds what it holds; check it first). Refused in the same boot as the failure."
        ),
    ] = False,
) -> None:
    """Run the embedded single-node ledger and its HTTP gateway.

    Starts a local Ray instance, the shard actors and the 2PC coordinator (each
    recovering from DATA_DIR), then the gateway. The single-node default keeps ONE
    copy of the data: losing this machine's disk loses the ledger.
    """
    from tokpay.actors.deploy import read_shard_count
    from tokpay.cluster.gateway import gateway_argv
    from tokpay.cluster.single import (
        NoDevIdentityProvider,
        start_dev_identity_provider,
        start_local_ledger,
        stop_local_ledger,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    data_dir = data_dir.resolve()
    try:
        shard_count = read_shard_count(data_dir, shards)
        _check_copies(data_dir, trust_after_reboot)
    except (ValueError, UntrustedCopy) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Starting Ray and {shard_count} shards on {data_dir} ...")
    ledger = start_local_ledger(data_dir, shard_count, fsync)
    gateway_env = ledger.gateway_env
    try:
        identity = start_dev_identity_provider(host, port)
    except NoDevIdentityProvider as error:
        console.print(f"[red]{error}[/red]")
        identity = None
    if identity is not None:
        gateway_env |= identity.gateway_env
        console.print(f"Dev login: OpenID provider at {identity.issuer} (any email, any password)")
    _print_summary(host, port, data_dir, shard_count, workers, server, fsync)
    gateway_process = subprocess.Popen(
        gateway_argv(host, port, workers, server.value), env=gateway_env
    )
    # SIGTERM (systemd, docker stop, kill) shuts down as cleanly as Ctrl+C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = gateway_process.wait()
    except KeyboardInterrupt:
        gateway_process.send_signal(signal.SIGINT)
        code = gateway_process.wait()
    finally:
        if identity is not None:
            identity.stop()
        stop_local_ledger(ledger)
    raise typer.Exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def gateway(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Gateway processes.")] = 2,
    server: Annotated[Server, typer.Option(help="ASGI server.")] = Server.granian,
) -> None:
    """Run only the HTTP gateway, attached to a running TokPay cluster.

    Reads TOKPAY_RAY_ADDRESS from the environment (``serve``
    sets it). Granian is the default: measured here, a trivial FastAPI route
    answers about 24,000 requests/s with 2 granian workers and about 1,400/s with
    2 uvicorn workers (uvicorn's multi-worker mode stalls ~40 ms per request).
    """
    # The server's workers build the app from their environment (tokpay.settings) and
    # are given nothing else: the bind address reaches them only this way.
    os.environ["TOKPAY_BIND_HOST"] = host
    if server is Server.granian:
        from granian.constants import Interfaces
        from granian.server import Server as Granian

        Granian(
            "tokpay.gateway:app_from_environment",
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            factory=True,
            log_access=False,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            "tokpay.gateway:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )


def _print_summary(
    host: str, port: int, data_dir: Path, shards: int, workers: int, server: Server, fsync: bool
) -> None:
    table = Table(title="TokPay (single node)", show_header=False)
    table.add_row("Web app", f"http://{host}:{port}/")
    table.add_row("API", f"http://{host}:{port}/v1")
    table.add_row("API docs", f"http://{host}:{port}/docs")
    table.add_row("Health / metrics", f"http://{host}:{port}/healthz  /metrics")
    table.add_row("Data directory", str(data_dir))
    table.add_row("Shards", str(shards))
    table.add_row("Gateway", f"{workers} x {server.value}")
    table.add_row(
        "Durability",
        ("fsync per batch" if fsync else "[red]fsync OFF: acknowledged writes can be lost[/red]")
        + "; ONE copy (single node: no replication)",
    )
    console.print(table)
    console.print(f"Ready: http://{host}:{port}  (Ctrl+C stops)")
