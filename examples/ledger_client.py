"""Ray client script: batch reads and transfers against a running ``tokpay serve``.

Run ``make run`` in one terminal, then ``.venv/bin/python examples/ledger_client.py [DATA_DIR]``.
It attaches to the local Ray cluster the server started, opens a few accounts,
tops them up, pays around in one batch and reads all balances in one batch.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path


def main() -> None:
    # `tokpay serve` runs Ray with token authentication; a driver given an explicit
    # address presents the token only if told so before Ray is imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from tokpay.client import connect
    from tokpay.ledger.model import (
        AccountSpec,
        Credit,
        TransferKind,
        TransferOrder,
        funding_account_id,
    )
    from tokpay.ledger.routing import shard_of

    # `tokpay serve` writes its Ray address here; "auto" would pick the newest cluster.
    address_file = Path(sys.argv[1] if len(sys.argv) > 1 else "var/tokpay") / "run" / "ray-address"
    ledger = connect(address_file.read_text() if address_file.exists() else "auto")
    run = uuid.uuid4().hex[:6]
    names = [f"example-{run}-{n}" for n in range(10)]
    specs = [AccountSpec(id=n, currency="USD", owner=f"{n}@example.com") for n in names]
    created = ledger.create_accounts(specs)
    print(f"opened {sum(1 for o in created if o.created)} accounts")

    topups = [
        TransferOrder(
            id=f"topup-{n}",
            debit=funding_account_id("USD", shard_of(n, ledger.shard_count)),
            credits=(Credit(n, 10_000),),
            currency="USD",
            kind=TransferKind.TOPUP,
        )
        for n in names
    ]
    payments = [
        TransferOrder(
            id=f"pay-{run}-{i}",
            debit=names[i],
            credits=(Credit(names[(i + 1) % 10], 250), Credit(names[(i + 2) % 10], 125)),
            currency="USD",
            memo="example",
        )
        for i in range(10)
    ]
    for label, orders in (("top-ups", topups), ("payments", payments)):
        outcomes = ledger.submit_many(orders)
        failed = [o for o in outcomes if o.transfer is None]
        print(f"{label}: {len(outcomes) - len(failed)} committed, {len(failed)} refused")

    for view in ledger.balances([*names, "no-such-account"]):
        print(view if view is not None else "unknown account")
    print("sum of balances per currency:", ledger.currency_sums())


if __name__ == "__main__":
    main()
