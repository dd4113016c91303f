"""Random bodies on every write endpoint: always a 4xx problem or a success, never a 5xx.

Hypothesis builds JSON documents around the real field names (so many get past the
parser and hit the rules) and also plain junk. A refused request must change
nothing: the sum of balances and the seeded accounts' balances stay as they were.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PATHS = ("/v1/transfers", "/v1/topups", "/v1/accounts", "/v1/balances/lookup")
FIELDS = ("id", "from", "to", "account", "amount", "currency", "memo", "owner", "account_ids")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.sampled_from(["USD", "EUR", "fuzz-payer", "fuzz-payee", "sys:funding:USD:0", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def _seed(http: httpx.Client) -> None:
    for account in ("fuzz-payer", "fuzz-payee"):
        http.post("/v1/accounts", json={"id": account, "currency": "USD", "owner": "f@example.com"})
    http.post(
        "/v1/topups",
        json={"id": "fuzz-seed", "account": "fuzz-payer", "amount": 1_000, "currency": "USD"},
    )


def _state(http: httpx.Client) -> Any:
    lookup = http.post("/v1/balances/lookup", json={"account_ids": ["fuzz-payer", "fuzz-payee"]})
    return lookup.json(), http.get("/v1/ledger/summary").json()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), body=st.one_of(documents, values))
def test_random_bodies_never_cause_a_server_error(http: httpx.Client, path: str, body: Any) -> None:
    _seed(http)
    before = _state(http)
    response = http.post(path, json=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"]
        assert _state(http) == before
    for figures in http.get("/v1/ledger/summary").json()["currencies"].values():
        assert figures["sum_of_balances"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(segment=st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s and s not in ".."))
def test_random_path_ids_never_cause_a_server_error(http: httpx.Client, segment: str) -> None:
    for template in ("/v1/accounts/{}", "/v1/accounts/{}/balance", "/v1/transfers/{}",
                     "/v1/accounts/{}/transfers"):  # fmt: skip
        response = http.get(template.format(quote(segment, safe="")))
        assert response.status_code < 500, response.text
