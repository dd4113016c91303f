"""Where each shard's primary (and the coordinator) listens, for the direct channel.

A single node finds its actors by name. A cluster asks the controller, whose routes
change on failover; callers ask again only after a call failed, so the directory is
off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import msgspec
import ray

from tokpay.actors.channel import ChannelError, NotPrimary, frame, read_frame_async
from tokpay.actors.naming import (
    CONTROLLER_NAME,
    COORDINATOR_NAME,
    NAMESPACE,
    replica_groups,
    shard_actor_name,
)
from tokpay.actors.protocol import ChannelAddress, Route
from tokpay.actors.timing import (
    ROUTES_ASK_TIMEOUT_SECONDS,
    ROUTES_FRESH_SECONDS,
    ROUTES_REFRESH_SECONDS,
    ROUTES_TIMEOUT_SECONDS,
)

log = logging.getLogger("tokpay.directory")


class Directory(Protocol):
    async def address(self, group: str) -> ChannelAddress: ...


class NamedActorDirectory:
    """The single-node default: one actor per shard, registered by name."""

    def __init__(self, shard_count: int) -> None:
        self._names = {
            group: COORDINATOR_NAME if shard is None else shard_actor_name(shard)
            for group, shard in replica_groups(shard_count).items()
        }

    async def address(self, group: str) -> ChannelAddress:
        name = self._names[group]
        handle = ray.get_actor(name, namespace=NAMESPACE)
        address: ChannelAddress = await handle.channel_address.remote()
        return address


class ControllerDirectory:
    """A replicated cluster: where each group's primary is, fetched again after a failure.

    Every replica carries the controller's routes (they come with its heartbeat
    answers), so a lookup asks a few known replicas over their channels and keeps, per
    group, the route of the highest epoch. Only when none answers does it ask the
    controller through Ray. The data path thus never depends on this process's Ray
    connection, which does not survive the loss of the node it is attached to.
    """

    def __init__(self) -> None:
        self._controller: Any = None
        self._routes: dict[str, Route] = {}
        self._seen: dict[ChannelAddress, None] = {}
        """Replicas' addresses from every route merged, newest last (at most ``SEEN_KEPT``):
        when every group fails over at once, each new route names no primary yet, but the
        backups it promotes are still listening where they were."""
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None

    async def _follow(self) -> None:
        """Keep the cached routes current (backups included) between failures, so a
        lookup after a machine dies still knows live replicas to ask."""
        while True:
            await asyncio.sleep(ROUTES_REFRESH_SECONDS)
            try:
                for routes in await self._from_replicas():
                    self._merge(routes)
            except Exception:
                log.exception("following the routes failed; will retry")

    async def routes(self) -> dict[str, Route]:
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())
        async with self._lock:
            if time.monotonic() - self._fetched_at > ROUTES_FRESH_SECONDS:
                found = await self._from_replicas() if self._routes else []
                if not found:
                    found = [await self._from_controller()]
                for routes in found:
                    self._merge(routes)
                self._fetched_at = time.monotonic()
            return self._routes

    def _merge(self, routes: dict[str, Route]) -> None:
        for group, route in routes.items():
            known = self._routes.get(group)
            if known is None or _freshness(route) > _freshness(known):
                self._routes[group] = route
            for address in (route.address, route.backup):
                if address is not None:
                    self._seen.pop(address, None)
                    self._seen[address] = None
        while len(self._seen) > SEEN_KEPT:
            del self._seen[next(iter(self._seen))]

    async def _from_controller(self) -> dict[str, Route]:
        try:
            if self._controller is None:
                self._controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            routes: dict[str, Route] = await asyncio.wait_for(
                self._controller.routes.remote(), ROUTES_TIMEOUT_SECONDS
            )
        except Exception as error:
            self._controller = None
            raise NotPrimary(f"the controller is not reachable: {error!r}") from error
        return routes

    async def _from_replicas(self) -> list[dict[str, Route]]:
        # Primaries and backups: a dead machine may hold every primary (or every backup).
        primaries = {r.address for r in self._routes.values() if r.address is not None}
        backups = {r.backup for r in self._routes.values() if r.backup is not None}
        addresses = list(primaries)[:REPLICAS_ASKED] + list(backups - primaries)[:REPLICAS_ASKED]
        answers = await asyncio.gather(*(_ask_routes(a) for a in addresses))
        found = [a for a in answers if a]
        if not found:
            # Those routes may all be mid-failover: ask replicas seen before, newest first.
            earlier = [a for a in reversed(self._seen) if a not in addresses][: REPLICAS_ASKED * 2]
            addresses += earlier
            found = [a for a in await asyncio.gather(*(_ask_routes(a) for a in earlier)) if a]
        if not found:
            log.warning(
                "no replica gave routes (asked %s of %d known); asking the controller",
                [a[:2] for a in addresses],
                len(self._routes),
            )
        return found

    async def address(self, group: str) -> ChannelAddress:
        route = (await self.routes()).get(group)
        if route is None or route.address is None:
            raise NotPrimary(f"{group} has no primary right now")
        return route.address


def _freshness(route: Route) -> tuple[int, bool, bool]:
    """Newer epochs win; within one epoch a route gains its primary's address (after a
    promotion) and then its backup's (once the backup is in sync)."""
    return route.epoch, route.address is not None, route.backup is not None


REPLICAS_ASKED = 3
SEEN_KEPT = 32


async def _ask_routes(address: ChannelAddress) -> dict[str, Route] | None:
    """One replica's copy of the routes, or None (unreachable, slow, or none yet)."""
    host, port, token = address
    writer = None
    try:
        async with asyncio.timeout(ROUTES_ASK_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame(token) + frame(msgspec.msgpack.encode(("routes", b""))))
            ok, result = msgspec.msgpack.decode(
                await read_frame_async(reader), type=tuple[bool, bytes]
            )
        if not ok or not result:
            return None
        routes: dict[str, Route] = msgspec.msgpack.decode(result, type=dict[str, Route])
        return routes
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ChannelError, msgspec.DecodeError):
        return None
    finally:
        if writer is not None:
            writer.close()
