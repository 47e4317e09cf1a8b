"""A storage's `host` list (odyssey.md §1.6): `h1:5432,[::1]:5433:az1,unix:///tmp` ->
`Endpoint`s."""

from __future__ import annotations

from pooler.config.model import Endpoint


def parse_endpoints(host: str, default_port: int) -> list[Endpoint]:
    """`h1:5432,[::1]:5433:az1,unix:///tmp` -> endpoints (odyssey.md §1.6)."""
    endpoints = []
    parts = host.split(",")
    if len(parts) > 128:
        raise ValueError("too many hosts (at most 128)")
    for raw in parts:
        entry = raw.strip()
        if not entry:
            raise ValueError(f"empty host in '{host}'")
        unix = False
        if entry.startswith("tcp://"):
            entry = entry[6:]
        elif entry.startswith("unix://"):
            entry = entry[7:]
            unix = True
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise ValueError(f"unclosed '[' in host '{raw}'")
            name = entry[1:close]
            rest = entry[close + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError(f"unexpected text after ']' in host '{raw}'")
            tail = rest[1:].split(":") if rest else []
        else:
            name, *tail = entry.split(":")
        if not name:
            raise ValueError(f"empty host in '{raw}'")
        port: int | None = None
        zone: str | None = None
        for piece in tail:
            if piece[:1].isdigit():
                if port is not None or not piece.isdigit():
                    raise ValueError(f"bad port in host '{raw}'")
                port = int(piece)
                if not 1 <= port <= 65535:
                    raise ValueError(f"port out of range in host '{raw}'")
            elif piece:
                if zone is not None:
                    raise ValueError(f"more than one availability zone in host '{raw}'")
                zone = piece
            else:
                raise ValueError(f"empty field in host '{raw}'")
        port = port if port is not None else default_port
        if unix:
            path = name if ".s.PGSQL." in name else f"{name.rstrip('/')}/.s.PGSQL.{port}"
            endpoints.append(Endpoint(None, port, path, zone))
        else:
            endpoints.append(Endpoint(name, port, None, zone))
    return endpoints
