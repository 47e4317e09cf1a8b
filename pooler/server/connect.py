"""Opening one server connection for a route: the socket (a host name through the worker's
DNS cache), server_max_routing, backend_connect_timeout_ms and the login; and whether a host
of a known kind suits a target_session_attrs (`kind_fits`). Which hosts to try, and what a
route does with what it gets (slots, steering), is `Route.connect`'s (pool.py)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pooler.config import Endpoint, Storage
from pooler.logs import log
from pooler.protocol.auth import ScramKeys
from pooler.server.backend import (
    BackendError,
    ServerConnection,
    ServerGone,
    ServerRoute,
    ServerWorker,
)

Secret = str | ScramKeys | None  # what answers the server's password request
TOO_MANY_CONNECTIONS = "53300"


class ConnectWorker(ServerWorker, Protocol):
    """What a connect uses of the route's worker (`worker.Worker`)."""

    def server_routing_gate(self, storage: Storage) -> asyncio.Semaphore | None: ...
    async def resolve(self, host: str, port: int) -> list[str]: ...


class ConnectingRoute(ServerRoute, Protocol):
    """What a connect uses of its route (`pool.Route`), besides what the new server does."""

    backend_db: str
    backend_user: str

    @property
    def worker(self) -> ConnectWorker: ...


class ConnectFailed(Exception):
    """A new server connection could not be made or logged in."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


def kind_fits(in_recovery: bool | None, wanted: str | None, strict: bool = False) -> bool:
    """Does a host (a standby: in_recovery) suit target_session_attrs `wanted`? Unknown
    suits only `any`. `strict`: prefer-standby takes only a standby."""
    if wanted in (None, "any"):
        return True
    if in_recovery is None:
        return False
    if wanted == "read-write":
        return not in_recovery
    if wanted == "read-only" or strict:
        return in_recovery
    return True  # prefer-standby


async def connect_to(
    route: ConnectingRoute, endpoint: Endpoint, password: Secret, storage: Storage
) -> ServerConnection:
    """A server logged in on `endpoint` (one of `storage`'s hosts) for `route`, once a
    place is free under the storage's server_max_routing; ConnectFailed if not."""
    gate = route.worker.server_routing_gate(storage)
    if gate is None:
        return await _connect_now(route, endpoint, password, storage)
    if gate.locked():
        log.info(
            "server_max_routing",
            f"storage '{storage.name}': server connect waits for one in progress",
        )
    async with gate:
        return await _connect_now(route, endpoint, password, storage)


async def _connect_now(
    route: ConnectingRoute, endpoint: Endpoint, password: Secret, storage: Storage
) -> ServerConnection:
    loop = asyncio.get_running_loop()
    timeout = route.worker.config.backend_connect_timeout_ms / 1000 or None
    server: ServerConnection | None = None
    try:
        async with asyncio.timeout(timeout):
            if endpoint.host is None:
                _, server = await loop.create_unix_connection(
                    lambda: ServerConnection(route, endpoint, storage), endpoint.unix_socket_path
                )
            else:
                addresses = await route.worker.resolve(endpoint.host, endpoint.port)
                for i, address in enumerate(addresses):  # (dns_cache_ttl)
                    try:
                        _, server = await loop.create_connection(
                            lambda: ServerConnection(route, endpoint, storage),
                            address,
                            endpoint.port,
                        )
                        break
                    except OSError:
                        if i == len(addresses) - 1:
                            raise
            assert server is not None  # (getaddrinfo returns an address or raises)
            await server.login(route.backend_user, route.backend_db, password)
            return server
    except asyncio.CancelledError:
        if server is not None:
            server.close()
        raise
    except (BackendError, OSError, TimeoutError, ServerGone) as exc:
        if server is not None:
            server.close()
        if isinstance(exc, BackendError):
            raise ConnectFailed(str(exc), exc.fields) from None
        where = endpoint.unix_socket_path or f"{endpoint.host}:{endpoint.port}"
        log.error("server", f"failed to connect to {where}: {exc or 'timeout'}")
        raise ConnectFailed(f"failed to connect to remote server {where}") from None
