"""What binding transfer ids at their home shard costs, measured in one run.

A transfer id is bound to its body at its home shard (``home_of``). A single-shard order
whose shard is the id's home needs nothing more; any other order is first claimed there
(one more batched call and log record). This benchmark starts one ``tokpay serve`` (fsync
on), opens accounts, then submits batches of single-shard orders through the batched Ray
client, alternating batches whose ids are homed on the debit's shard ("home": no claim)
with batches whose ids are homed elsewhere ("away": claimed first). The ratio of the two
rates is the claim's cost on the write path; the same accounts, server and minute serve
both, so the machine's noise falls on both alike.
"""

from __future__ import annotations

import itertools
import json
import random
import time

import bench_server

from tokpay.ledger.model import AccountSpec, Credit, TransferOrder, funding_account_id
from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import home_of

CURRENCY = "USD"


def ids_homed(shard: int, shards: int, away: bool, counter: itertools.count[int]) -> str:
    """The next transfer id whose home is ``shard`` (or, if ``away``, any other shard)."""
    while True:
        candidate = f"claim-{next(counter)}"
        if (home_of(candidate, shards) == shard) != away:
            return candidate


def main() -> None:
    parser = bench_server.arguments(__doc__ or "")
    parser.add_argument("--accounts", type=int, default=2_000, help="accounts opened (2,000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of home+away batches (10)")
    parser.add_argument("--batch", type=int, default=4_000, help="orders per batch (4,000)")
    args = parser.parse_args()
    with bench_server.ledger_server("id-claims-", args.shards) as (_, address):
        from tokpay.client import connect  # imports Ray: only now

        ledger = connect(address)
        accounts = [f"ic-{n}" for n in range(args.accounts)]
        ledger.create_accounts(
            [AccountSpec(id=a, currency=CURRENCY, owner="bench") for a in accounts]
        )
        topups = [
            TransferOrder(
                id=f"ic-top-{a}",
                debit=funding_account_id(CURRENCY, shard_of(a, args.shards)),
                credits=(Credit(a, 10**9),),
                currency=CURRENCY,
                kind="topup",
            )
            for a in accounts
        ]
        ledger.submit_many(topups)
        by_shard: dict[int, list[str]] = {}
        for a in accounts:
            by_shard.setdefault(shard_of(a, args.shards), []).append(a)
        rng, counter = random.Random(7), itertools.count()
        rates: dict[str, list[float]] = {"home": [], "away": []}
        for round_ in range(args.rounds):
            for kind in ("home", "away") if round_ % 2 == 0 else ("away", "home"):
                orders = []
                for _ in range(args.batch):
                    shard = rng.randrange(args.shards)
                    debit, credit = rng.sample(by_shard[shard], 2)
                    transfer_id = ids_homed(shard, args.shards, kind == "away", counter)
                    orders.append(
                        TransferOrder(
                            id=transfer_id,
                            debit=debit,
                            credits=(Credit(credit, 1),),
                            currency=CURRENCY,
                        )
                    )
                started = time.perf_counter()
                outcomes = ledger.submit_many(orders)
                elapsed = time.perf_counter() - started
                if any(o.transfer is None for o in outcomes):
                    raise SystemExit(f"{kind}: a transfer was refused")
                rates[kind].append(args.batch / elapsed)
            print(
                f"round {round_ + 1}/{args.rounds}: home {rates['home'][-1]:,.0f}/s, "
                f"away {rates['away'][-1]:,.0f}/s",
                flush=True,
            )
        home = sorted(rates["home"])[len(rates["home"]) // 2]
        away = sorted(rates["away"])[len(rates["away"]) // 2]
        summary = {
            "home_median_per_s": home,
            "away_median_per_s": away,
            "away_over_home": away / home,
            "claim_cost_us_per_transfer": (1 / away - 1 / home) * 1e6,
            "rates": rates,
        }
        print(
            f"median: home {home:,.0f}/s, away (claimed) {away:,.0f}/s, ratio {away / home:.2f}, "
            f"claim cost {summary['claim_cost_us_per_transfer']:.0f} us per transfer"
        )
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
