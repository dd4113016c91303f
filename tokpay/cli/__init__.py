"""The ``tokpay`` command: one obvious way to start things.

Typer (on Click) gives typed options and ``--help`` on every command from the
signatures in this package, so the help cannot drift from what the code accepts. One
module per command group (serve: ``serve``, ``gateway``; cluster: ``cluster ...``;
drill: ``drill``); they parse options and print, and call tokpay.cluster and
tokpay.testing for the work.
"""

from __future__ import annotations

import typer

from tokpay.cli.cluster import cluster_app
from tokpay.cli.drill import drill
from tokpay.cli.serve import gateway, serve

app = typer.Typer(
    help="TokPay: a strongly consistent wallet-and-ledger on Ray.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """TokPay: a strongly consistent wallet-and-ledger on Ray."""


app.command()(serve)
app.command()(gateway)
app.add_typer(cluster_app, name="cluster")
app.command("drill")(drill)
