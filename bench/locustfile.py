"""User journeys for locust: open a wallet, top up, pay friends, check balance and history.

    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 50 -r 10 -t 60s

Each simulated user owns one account; payments go to 1..3 users seen so far.
"""

from __future__ import annotations

import random
import uuid

from locust import HttpUser, between, task

_known_accounts: list[str] = []


class WalletUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.account = f"loc-{uuid.uuid4().hex[:12]}"
        self.client.post(
            "/v1/accounts",
            json={"id": self.account, "currency": "USD", "owner": f"{self.account}@example.com"},
            name="/v1/accounts",
        )
        self._top_up(50_000)
        _known_accounts.append(self.account)

    def _top_up(self, amount: int) -> None:
        body = {
            "id": uuid.uuid4().hex,
            "account": self.account,
            "amount": amount,
            "currency": "USD",
        }
        self.client.post("/v1/topups", json=body, name="/v1/topups")

    @task(10)
    def check_balance(self) -> None:
        self.client.get(f"/v1/accounts/{self.account}/balance", name="/v1/accounts/{id}/balance")

    @task(4)
    def pay_friends(self) -> None:
        friends = [a for a in _known_accounts if a != self.account]
        if not friends:
            return
        legs = [
            {"account": friend, "amount": random.randint(1, 500)}
            for friend in random.sample(friends, min(len(friends), random.randint(1, 3)))
        ]
        body = {"id": uuid.uuid4().hex, "from": self.account, "to": legs, "currency": "USD"}
        with self.client.post(
            "/v1/transfers", json=body, name="/v1/transfers", catch_response=True
        ) as response:
            if response.status_code == 422 and response.json().get("code") == "insufficient_funds":
                response.success()
                self._top_up(50_000)

    @task(2)
    def history(self) -> None:
        self.client.get(
            f"/v1/accounts/{self.account}/transfers?limit=20", name="/v1/accounts/{id}/transfers"
        )

    @task(1)
    def top_up(self) -> None:
        self._top_up(random.randint(100, 10_000))
