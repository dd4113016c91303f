"""Where each shard's primary (and the coordinator) listens, for the direct channel.

A single node finds its actors by name. A cluster asks the controller, whose routes
change on failover; callers ask again only after a call failed, so the directory is
off the hot path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import msgspec
import ray

from tokpay.actors.channel import ChannelAddress, NotPrimary
from tokpay.actors.naming import CONTROLLER_NAME, COORDINATOR_NAME, NAMESPACE, shard_actor_name

COORDINATOR_GROUP = "coordinator"
ROUTES_TIMEOUT_SECONDS = 2.0
ROUTES_FRESH_SECONDS = 0.05
"""Concurrent lookups within this window share one call to the controller."""


def shard_group(shard: int) -> str:
    return f"shard-{shard}"


class Route(msgspec.Struct, frozen=True):
    """The serving primary of one group at one epoch (address None while there is none)."""

    epoch: int
    primary: str | None
    address: ChannelAddress | None


class Directory(Protocol):
    async def address(self, group: str) -> ChannelAddress: ...


class NamedActorDirectory:
    """The single-node default: one actor per shard, registered by name."""

    def __init__(self, shard_count: int) -> None:
        self._shard_count = shard_count

    async def address(self, group: str) -> ChannelAddress:
        if group == COORDINATOR_GROUP:
            name = COORDINATOR_NAME
        else:
            name = shard_actor_name(int(group.removeprefix("shard-")))
        handle = ray.get_actor(name, namespace=NAMESPACE)
        address: ChannelAddress = await handle.channel_address.remote()
        return address


class ControllerDirectory:
    """A replicated cluster: the controller's routes, fetched again after a failure."""

    def __init__(self) -> None:
        self._controller: Any = None
        self._routes: dict[str, Route] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def routes(self) -> dict[str, Route]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > ROUTES_FRESH_SECONDS:
                try:
                    if self._controller is None:
                        self._controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
                    self._routes = await asyncio.wait_for(
                        self._controller.routes.remote(), ROUTES_TIMEOUT_SECONDS
                    )
                except Exception as error:
                    self._controller = None
                    raise NotPrimary(f"the controller is not reachable: {error!r}") from error
                self._fetched_at = time.monotonic()
            return self._routes

    async def address(self, group: str) -> ChannelAddress:
        route = (await self.routes()).get(group)
        if route is None or route.address is None:
            raise NotPrimary(f"{group} has no primary right now")
        return route.address
