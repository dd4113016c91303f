"""CPU one shard spends per write batch, in process: no Ray, no network, no gateway.

Opens a ``ShardService`` (shard 0 of 4) in a temporary directory, opens and funds
1,000 accounts, then applies ``--batches`` batches of ``--orders`` single-shard
orders (1 -> 1..3 legs, random accounts, new ids) and, where the shard has them,
``--claims`` claims of ids homed here for orders elsewhere. Prints the process CPU
time (user + system, so an fsync's kernel work counts) and the wall time per batch;
where the shard has a store (issue 10), the part spent in its id lookups
(``bindings``, or older point reads) and writes; ``--profile`` adds cProfile's 25 costliest functions.

The same file runs on older checkouts (it uses ``apply_orders`` where a shard has no
``claim_and_apply``): copy it into one and run it with ``PYTHONPATH`` set to that
checkout, to compare what a shard pays per batch.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tokpay.actors.protocol import encode
from tokpay.actors.shard import ShardService
from tokpay.ledger.model import AccountSpec, Credit, TransferKind, TransferOrder
from tokpay.ledger.model import funding_account_id as funding
from tokpay.ledger.routing import shard_of

SHARD_COUNT = 4
ACCOUNTS = 1_000


def accounts_here() -> list[str]:
    names: list[str] = []
    n = 0
    while len(names) < ACCOUNTS:
        if shard_of(f"b{n}", SHARD_COUNT) == 0:
            names.append(f"b{n}")
        n += 1
    return names


def time_store_calls(service: ShardService) -> dict[str, float]:
    """CPU seconds spent in the shard's store id lookups and writes, filled in as the
    batches run (empty on a commit whose shard has no store)."""
    store = getattr(service, "store", None)
    spent: dict[str, float] = {}
    if store is None:
        return spent
    for name in ("bindings", "transfer", "mark", "write"):
        if not hasattr(store, name):
            continue  # an older store: point reads (transfer, mark) instead of bindings
        spent[name] = 0.0
        setattr(store, name, _timed(getattr(store, name), name, spent))
    return spent


def _timed(call: Any, name: str, spent: dict[str, float]) -> Any:
    def timed(*args: Any) -> Any:
        started = time.process_time()
        try:
            return call(*args)
        finally:
            spent[name] += time.process_time() - started

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=5_000)
    parser.add_argument("--orders", type=int, default=2, help="orders per batch")
    parser.add_argument("--claims", type=int, default=0, help="claims per batch (if supported)")
    parser.add_argument("--no-fsync", action="store_true", help="CPU without the log's fsync")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 25")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokpay-batch-"))
    service = ShardService(0, SHARD_COUNT, work, fsync=not args.no_fsync)
    claims = hasattr(service, "claim_and_apply")
    try:
        names = accounts_here()
        specs = [AccountSpec(id=a, currency="USD", owner=f"{a}@bench.example") for a in names]
        service.create_accounts(encode(specs))
        for start in range(0, ACCOUNTS, 100):
            topups = [
                TransferOrder(
                    id=f"seed-{a}",
                    debit=funding("USD", 0),
                    credits=(Credit(a, 10**12),),
                    currency="USD",
                    kind=TransferKind.TOPUP,
                )
                for a in names[start : start + 100]
            ]
            service.apply_orders(encode(topups))

        def order() -> TransferOrder:
            legs = tuple(Credit(random.choice(names), 1) for _ in range(random.randint(1, 3)))
            return TransferOrder(
                id=str(uuid.uuid4()), debit=random.choice(names), credits=legs, currency="USD"
            )

        def claim() -> TransferOrder:
            while True:  # an id homed here (its home is shard_of the id) for an order elsewhere
                transfer_id = str(uuid.uuid4())
                if shard_of(transfer_id, SHARD_COUNT) == 0:
                    return TransferOrder(
                        id=transfer_id, debit="x1", credits=(Credit("x2", 1),), currency="USD"
                    )

        payloads = []
        for _ in range(args.batches):
            orders = [order() for _ in range(args.orders)]
            if claims:
                payloads.append(encode(([claim() for _ in range(args.claims)], orders)))
            else:
                payloads.append(encode(orders))
        apply = service.claim_and_apply if claims else service.apply_orders
        store_cpu = time_store_calls(service)
        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.monotonic()
        if profile is not None:
            profile.enable()
        for payload in payloads:
            apply(payload)
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        sums = service.currency_sums()
    finally:
        service.close()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.batches} batches of {args.orders} orders"
        + (f" + {args.claims} claims" if claims else " (no claims on this commit)")
        + f", fsync {'off' if args.no_fsync else 'on'}: {cpu / args.batches * 1000:.3f} ms CPU "
        f"and {wall / args.batches * 1000:.3f} ms wall per batch"
    )
    if store_cpu:
        print(
            "of which the store: "
            + ", ".join(
                f"{name} {seconds / args.batches * 1000:.3f} ms"
                for name, seconds in store_cpu.items()
            )
            + " CPU per batch"
        )
    if any(sums.values()):
        sys.exit(f"the balances do not sum to zero after the run: {sums}")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
