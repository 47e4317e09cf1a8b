"""A worker's DNS cache of storage host names (odyssey's resolver cache, dns_cache_ttl)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from pooler.logs import log


class DnsCache:
    """Host name -> addresses, each kept until its time runs out."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[list[str], float]] = {}  # host: (addresses, until)

    async def resolve(self, host: str, port: int, ttl_ms: int) -> list[str]:
        """A storage host name's addresses, remembered for dns_cache_ttl ms (odyssey's
        resolver cache; 0: asked every time). An address is returned as it is."""
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and now < cached[1]:
            return cached[0]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        ttl = ttl_ms / 1000
        log.debug("dns", f"resolved {host} -> {', '.join(addresses)} (cached for {ttl:g} s)")
        if ttl > 0:
            self._cache[host] = (addresses, now + ttl)
        return addresses
