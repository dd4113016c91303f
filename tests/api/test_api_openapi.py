"""The OpenAPI document against the real server: every answer is one the document lists.

For each operation in ``/openapi.json`` the walk sends a good request and one request
per rule the document states (bounds, lengths, patterns, enums, required and unknown
fields, list sizes; plus a body that is not JSON, one sent as text/plain and one too
large), and checks that the status is documented for that operation, with the
documented content type. A request breaking a documented rule must be refused (4xx),
so the document claims no rule the server does not keep; a good one must succeed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokpay.api.app import build_api
from tokpay.api.deps import Gateway
from tokpay.ledger.limits import (
    MAX_AMOUNT,
    MAX_BODY_BYTES,
    MAX_CREDITS,
    MAX_ID_LENGTH,
    MAX_LOOKUP_IDS,
    MAX_MEMO_BYTES,
    MAX_PAGE_SIZE,
)
from tokpay.ledger.validation import is_valid_id

Schema = dict[str, Any]
NOT_AN_ID = "not an id!"


@dataclass(frozen=True)
class Probe:
    """One request of the walk and what it tests."""

    what: str
    path: str
    params: dict[str, str]
    body: bytes | None = None
    content_type: str = "application/json"
    breaks_rule: bool = False
    good: bool = False


@dataclass(frozen=True)
class Seeded:
    """Ids that exist on the server, for the good requests."""

    payer: str
    payee: str
    transfer: str


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _good_body(schema_name: str, seeded: Seeded) -> dict[str, Any]:
    """A request body that should succeed; the walk fails on a schema it does not know."""
    bodies: dict[str, dict[str, Any]] = {
        "AccountIn": {
            "id": _uid("walk"),
            "currency": "USD",
            "owner": "walk@example.com",
            "allow_overdraft": False,
        },
        "LookupIn": {"account_ids": [seeded.payer, seeded.payee]},
        "TopupIn": {"id": _uid("top"), "account": seeded.payee, "amount": 1, "currency": "USD"},
        "TransferIn": {
            "id": _uid("pay"),
            "from": seeded.payer,
            "to": [{"account": seeded.payee, "amount": 1}],
            "currency": "USD",
            "memo": "schema walk",
        },
    }
    return bodies[schema_name]


def _resolve(schema: Schema, document: Schema) -> Schema:
    if "$ref" in schema:
        resolved: Schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return resolved
    for member in schema.get("anyOf", ()):
        if member.get("type") != "null":
            return _resolve(member, document)
    return schema


def rule_breakers(schema: Schema, value: Any, document: Schema) -> Iterator[tuple[str, Any]]:
    """For every rule ``schema`` states about ``value``: its name and a value breaking it."""
    schema = _resolve(schema, document)
    kind = schema.get("type")
    if kind == "object":
        for name in schema.get("required", ()):
            yield f"{name} missing", {k: v for k, v in value.items() if k != name}
        if schema.get("additionalProperties") is False:
            yield "unknown field", {**value, "unexpected": 1}
        for name, field in schema.get("properties", {}).items():
            if name in value:
                for rule, broken in rule_breakers(field, value[name], document):
                    yield f"{name}: {rule}", {**value, name: broken}
    elif kind == "array":
        if "maxItems" in schema:
            yield "maxItems", [value[0]] * (schema["maxItems"] + 1)
        if schema.get("minItems", 0) > 0:
            yield "minItems", value[: schema["minItems"] - 1]
        for rule, broken in rule_breakers(schema["items"], value[0], document):
            yield f"[0] {rule}", [broken, *value[1:]]
    elif kind == "integer":
        yield "type", "one"  # not an integer in a JSON body nor in a query string
        if "minimum" in schema:
            yield "minimum", schema["minimum"] - 1
        if "maximum" in schema:
            yield "maximum", schema["maximum"] + 1
    elif kind == "string":
        yield "type", 1
        yield from _string_breakers(schema)
    elif kind == "boolean":
        yield "type", "yes"


def _string_breakers(schema: Schema) -> Iterator[tuple[str, str]]:
    if "maxLength" in schema:
        yield "maxLength", "a" * (schema["maxLength"] + 1)
    if schema.get("minLength", 0) > 0:
        yield "minLength", ""
    if "pattern" in schema:
        assert not matches(schema["pattern"], NOT_AN_ID)
        yield "pattern", NOT_AN_ID
    if "enum" in schema:
        yield "enum", "not in the enum"


def matches(pattern: str, text: str) -> bool:
    """A JSON Schema pattern's verdict: its ``$`` is ECMA-262's, never before a final newline."""
    return re.search(pattern.removesuffix("$") + r"\Z", text) is not None


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def probes(path: str, operation: Schema, document: Schema, seeded: Seeded) -> Iterator[Probe]:
    """The good request of one operation, then one request per rule it documents."""
    ids = {"account_id": seeded.payer, "transfer_id": seeded.transfer}
    in_path = [p for p in operation.get("parameters", ()) if p["in"] == "path"]
    url = path.format(**{p["name"]: ids[p["name"]] for p in in_path})
    body = None
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        good = _good_body(schema["$ref"].rsplit("/", 1)[1], seeded)
        body = _encode(good)
        for rule, broken in rule_breakers(schema, good, document):
            yield Probe(f"body {rule}", url, {}, _encode(broken), breaks_rule=True)
        yield Probe("body not JSON", url, {}, b"{not json", breaks_rule=True)
        yield Probe("text/plain body", url, {}, body, "text/plain", breaks_rule=True)
        too_large = body + b" " * (MAX_BODY_BYTES + 1 - len(body))
        yield Probe("body too large", url, {}, too_large, breaks_rule=True)
    yield Probe("good", url, {}, body, good=True)
    for parameter in in_path:
        name = parameter["name"]
        unknown = path.format(**{**ids, name: _uid("unknown")})
        yield Probe(f"{name} unknown", unknown, {}, body)
        for rule, broken in _string_breakers(parameter["schema"]):
            if rule != "minLength":  # an empty segment is another URL, not an empty id
                bad = path.format(**{**ids, name: quote(broken, safe="")})
                yield Probe(f"{name} {rule}", bad, {}, body, breaks_rule=True)
    for parameter in operation.get("parameters", ()):
        # Only number rules: every query string is a string, so a string rule never binds.
        if parameter["in"] == "query" and parameter["schema"]["type"] == "integer":
            for rule, broken in rule_breakers(parameter["schema"], 1, document):
                query = {parameter["name"]: str(broken)}
                yield Probe(f"{parameter['name']} {rule}", url, query, breaks_rule=True)


def _seed(http: httpx.Client) -> Seeded:
    payer, payee = _uid("walk-payer"), _uid("walk-payee")
    for account in (payer, payee):
        body = {"id": account, "currency": "USD", "owner": "walk@example.com"}
        assert http.post("/v1/accounts", json=body).status_code == 201
    topup = {"id": _uid("walk-top"), "account": payer, "amount": 10_000, "currency": "USD"}
    created = http.post("/v1/topups", json=topup)
    assert created.status_code == 201, created.text
    return Seeded(payer, payee, topup["id"])


def test_every_answer_is_documented(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    seeded = _seed(http)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for probe in probes(path, operation, document, seeded):
                where = f"{method.upper()} {probe.path} ({probe.what})"
                response = http.request(
                    method,
                    probe.path,
                    params=probe.params,
                    content=probe.body,
                    headers={"content-type": probe.content_type} if probe.body else {},
                )
                documented = operation["responses"].get(str(response.status_code))
                assert documented is not None, f"{where}: undocumented {response.status_code}"
                media_type = response.headers["content-type"].split(";", 1)[0]
                assert media_type in documented["content"], f"{where}: {media_type}"
                if probe.breaks_rule:
                    assert 400 <= response.status_code < 500, f"{where}: {response.text}"
                if probe.good:
                    assert response.status_code < 300, f"{where}: {response.text}"
                checked += 1
    assert checked > 50, "the walk sent too few requests to mean anything"


@pytest.fixture(scope="module")
def document() -> Schema:
    """The document as the app builds it, no server needed."""
    built: Schema = build_api(Gateway()).openapi()
    return built


def _property(document: Schema, schema: str, name: str) -> Schema:
    return _resolve(document["components"]["schemas"][schema]["properties"][name], document)


def test_the_document_states_the_ledger_limits(document: Schema) -> None:
    leg_amount = _property(document, "LegIn", "amount")
    assert (leg_amount["minimum"], leg_amount["maximum"]) == (1, MAX_AMOUNT)
    legs = _property(document, "TransferIn", "to")
    assert (legs["minItems"], legs["maxItems"]) == (1, MAX_CREDITS)
    assert _property(document, "TransferIn", "memo")["maxLength"] == MAX_MEMO_BYTES
    assert _property(document, "LookupIn", "account_ids")["maxItems"] == MAX_LOOKUP_IDS
    for schema, name in (("TransferIn", "id"), ("TopupIn", "account"), ("AccountIn", "id")):
        assert _property(document, schema, name)["maxLength"] == MAX_ID_LENGTH
    history = document["paths"]["/v1/accounts/{account_id}/transfers"]["get"]
    (limit,) = (p["schema"] for p in history["parameters"] if p["name"] == "limit")
    assert (limit["minimum"], limit["maximum"]) == (1, MAX_PAGE_SIZE)
    for operations in document["paths"].values():
        for operation in operations.values():
            if "requestBody" in operation:
                assert {"413", "415", "422"} <= operation["responses"].keys()
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


@given(
    st.text(max_size=MAX_ID_LENGTH + 2)
    | st.text(alphabet="AZaz09._:@-", min_size=MAX_ID_LENGTH - 1, max_size=MAX_ID_LENGTH + 1)
)
def test_the_id_pattern_is_the_ledgers(document: Schema, text: str) -> None:
    documented = _property(document, "TopupIn", "id")["pattern"]
    assert matches(documented, text) == is_valid_id(text)
