"""The gateway process: one ASGI app serving the JSON API and the web app.

The API (``tokpay.api``) and the web app (``tokpay.web``) know nothing of each
other; this module composes them on one FastAPI app over one ledger client, which
it attaches to the Ray cluster when the server starts. ``app_from_environment``
is the factory ASGI servers import (``tokpay.gateway:app_from_environment``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import ray
from fastapi import FastAPI
from starlette.types import ASGIApp

from tokpay.actors.deploy import connect_ledger
from tokpay.actors.naming import CONTROLLER_NAME, COORDINATOR_NAME, NAMESPACE
from tokpay.api.app import build_api, serve_api
from tokpay.api.deps import Gateway
from tokpay.api.handlers import Handlers
from tokpay.api.metrics import BATCH_SIZE
from tokpay.client.ledger import LedgerClient
from tokpay.settings import Settings
from tokpay.web.site import install_web

log = logging.getLogger("tokpay.gateway")

SWAGGER_UI_ASSETS = "/static/vendor"
"""Where the web app's static files hold Swagger UI (npm swagger-ui-dist, copied by setup.sh)."""


def find_controller() -> Any:
    """The replicated cluster's controller, or None on the single-node default."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


async def attach_ledger(settings: Settings) -> LedgerClient:
    """Join the Ray cluster and open a client over the cluster's own shard count."""
    if not ray.is_initialized():
        ray.init(
            address=settings.ray_address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    # The cluster's own shard count, not a setting that could disagree with it.
    controller = find_controller()
    if controller is not None:
        shard_count = await controller.shard_count.remote()
        client = LedgerClient.for_cluster(shard_count)
    else:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        shard_count = await coordinator.shard_count.remote()
        client = LedgerClient(connect_ledger(shard_count))
    client.batch_observer = BATCH_SIZE.observe
    log.info("gateway attached to %d shards", shard_count)
    return client


def create_app(settings: Settings | None = None, *, connect: bool = True) -> ASGIApp:
    """The gateway's ASGI app; with ``connect`` it attaches to the Ray cluster on startup."""
    settings = settings or Settings()
    gateway = Gateway()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if connect:
            gateway.handlers = Handlers(await attach_ledger(settings))
        yield

    api = build_api(gateway, lifespan, docs_assets=SWAGGER_UI_ASSETS)
    install_web(api, settings, lambda: gateway.require().ledger)
    return serve_api(api, gateway, settings)


def app_from_environment() -> ASGIApp:
    """Factory for ASGI servers started with one import string (uvicorn/granian workers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(Settings())
