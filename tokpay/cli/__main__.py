"""``python -m tokpay.cli``: the same as the ``tokpay`` command (child processes use it)."""

from tokpay.cli import app

app()
