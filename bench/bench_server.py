"""What the storage benchmarks share: their common options and a fresh `tokpay serve`."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokpay.testing.localserver import LocalServer


def arguments(doc: str) -> argparse.ArgumentParser:
    """A parser described by the module's first line, with --shards and --json."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4, help="shards of the server (4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


@contextmanager
def ledger_server(prefix: str, shards: int) -> Iterator[tuple[Path, str]]:
    """A fresh single-node server: (its work directory, its Ray address); stopped and
    deleted afterwards. Its Ray uses token authentication, which a driver given an
    explicit address presents only if told so before Ray is imported: import
    ``tokpay.client`` only inside this block."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalServer(work / "data", shards=shards)
    try:
        server.start()
        yield work, (work / "data" / "run" / "ray-address").read_text()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
