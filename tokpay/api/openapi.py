"""The OpenAPI document, written to say what the server really answers.

Routes take their documentation from ``operation``: every status a route can
answer, each with its content type (JSON for successes, ``problem+json`` for
every refusal, plain text for ``/metrics``), the request body with the rules
of ``schemas`` (bounds from ``tokpay.ledger.limits``), and the bearer key on
``/v1``. ``install`` adds the body schemas and the path ids with their pattern.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse

from tokpay.api import schemas
from tokpay.api.problems import JSON_MEDIA_TYPE, PROBLEM_MEDIA_TYPE, Problem
from tokpay.ledger.limits import DEFAULT_PAGE_SIZE, MAX_BODY_BYTES, MAX_PAGE_SIZE

WHY: dict[int, str] = {
    401: "No or wrong `Authorization: Bearer` key (any server but a loopback-only dev server)",
    403: "A system account where it may not be",
    404: "No such account or transfer",
    409: "The id is taken, with a different body",
    413: f"Body larger than {MAX_BODY_BYTES} bytes",
    415: "Body not sent as application/json",
    422: "A rule refused the body or a parameter; `code` says which",
    429: "Too many requests waiting for the ledger; nothing was done, retry later",
    500: "Unexpected server error",
    503: "The ledger cannot be reached, or the gateway is still starting",
    507: "The account's shard holds as many accounts as it may (`shard_full`); nothing was created",
}

ID_SCHEMA: dict[str, Any] = msgspec.json.schema(schemas.Id)
"""Every path parameter of the API is an account or transfer id."""

HISTORY_QUERY: list[dict[str, Any]] = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "default": DEFAULT_PAGE_SIZE,
        },
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "`next_cursor` of the page before",
        "schema": {"type": "string"},
    },
]

_BODIES = (
    schemas.AccountIn,
    schemas.AccountOut,
    schemas.BalanceOut,
    schemas.LookupIn,
    schemas.LookupOut,
    schemas.TransferIn,
    schemas.TransferOut,
    schemas.TopupIn,
    schemas.HistoryOut,
    schemas.LedgerSummaryOut,
    schemas.HealthOut,
    schemas.LivenessOut,
    Problem,
)
_SECURITY_SCHEME = "apiKey"
_PATH_ID = re.compile(r"{(\w+)}")


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID_SCHEMA}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def operation(
    summary: str,
    out: str | None,
    *,
    body: str | None = None,
    created: bool = False,
    refusals: tuple[int, ...] = (),
    query: list[dict[str, Any]] | None = None,
    v1: bool = True,
    ledger: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator that document one operation truthfully.

    ``out`` names the JSON schema of a success (None: Prometheus text); a ``body``
    brings 413, 415 and 422; ``v1`` routes (and ``/metrics``) sit behind the API key (401); ``ledger``
    routes fail with 500/503 when the ledger does; ``refusals`` are the rest (429
    only where the client's batcher or lookup bound can refuse); ``query`` documents
    query parameters the handler parses itself.
    """
    success = 201 if created else 200
    media_type = JSON_MEDIA_TYPE if out is not None else "text/plain"
    schema = _ref(out) if out is not None else {"type": "string"}
    responses: dict[int | str, Any] = {
        success: _answer("Created" if created else "Success", media_type, schema)
    }
    if created:
        replay = "The same id and body again: the original result, nothing done twice"
        responses[200] = _answer(replay, media_type, schema)
    failures = set(refusals)
    if body is not None:
        failures |= {413, 415, 422}
    if v1:
        failures.add(401)
    if ledger:
        failures |= {500, 503}
    for status in sorted(failures):
        responses[status] = _answer(WHY[status], PROBLEM_MEDIA_TYPE, _ref("Problem"))
    extra: dict[str, Any] = {}
    if body is not None:
        content = {JSON_MEDIA_TYPE: {"schema": _ref(body)}}
        extra["requestBody"] = {"required": True, "content": content}
    if query is not None:
        extra["parameters"] = query
    if v1:
        # The empty alternative: a loopback-only development server needs no key.
        extra["security"] = [{_SECURITY_SCHEME: []}, {}]
    kwargs: dict[str, Any] = {
        "summary": summary,
        "status_code": success,
        "responses": responses,
        "openapi_extra": extra,
    }
    if out is None:
        kwargs["response_class"] = PlainTextResponse
    return kwargs


def install(api: FastAPI) -> None:
    """Serve the document with the body schemas, the key scheme and id patterns in it."""
    _, components = msgspec.json.schema_components(
        _BODIES, ref_template="#/components/schemas/{name}"
    )
    generate = api.openapi

    def document() -> dict[str, Any]:
        if api.openapi_schema is None:
            built = generate()
            parts = built.setdefault("components", {})
            parts.setdefault("schemas", {}).update(components)
            parts["securitySchemes"] = {_SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}}
            for path, operations in built["paths"].items():
                ids = [_path_id(name) for name in _PATH_ID.findall(path)]
                for spec in operations.values():
                    spec["parameters"] = [*ids, *spec.get("parameters", ())]
            api.openapi_schema = built
        return api.openapi_schema

    api.openapi = document  # type: ignore[method-assign]


DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""``/docs`` runs only this server's scripts and styles (Swagger UI's icons are data: SVGs)."""

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TokPay API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

_DOCS_INIT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true
});
"""


def install_docs(api: FastAPI, assets: str) -> None:
    """``/docs``: Swagger UI from ``assets`` (the npm package's files, served by this server),
    started by a script file rather than an inline one, so the page's CSP allows only self."""
    page = _DOCS_PAGE.format(assets=assets.rstrip("/")).encode()
    headers = {"Content-Security-Policy": DOCS_CSP}

    async def docs() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def init() -> Response:
        return Response(_DOCS_INIT, media_type="text/javascript", headers=headers)

    api.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    api.add_api_route("/docs/init.js", init, methods=["GET"], include_in_schema=False)
