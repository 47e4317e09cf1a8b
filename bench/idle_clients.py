#!/usr/bin/env python3
"""Open N idle PostgreSQL client connections (raw protocol 3.0 startup, trust auth) and hold them.

Usage: idle_clients.py HOST PORT N [--hold K] [--once] [--user U] [--db D]

After all N have logged in (ReadyForQuery received) it prints ``READY <n>`` and reads commands
from stdin:

* ``hold``: the first K connections send ``BEGIN; SELECT 1`` and keep the transaction open, so
  a transaction pool must give each its own server connection; prints ``HELD <k>``;
* ``quit`` (or EOF): close everything and exit.

``--once``: log in, run ``SELECT 1`` on each connection, close and exit (a warm-up).
Used by bench/bench.py for the memory measurement; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import sys


def startup(user: str, db: str) -> bytes:
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "bench_idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    data = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(data) + 4) + data


async def until_ready(reader: asyncio.StreamReader) -> None:
    """Read messages until ReadyForQuery; raise on ErrorResponse or a password request."""
    while True:
        head = await reader.readexactly(5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        body = await reader.readexactly(length - 4)
        if kind == b"Z":
            return
        if kind == b"E":
            fields = dict(
                (f[:1].decode(), f[1:].decode(errors="replace")) for f in body.split(b"\0") if f
            )
            raise RuntimeError(f"server error: {fields.get('M', body[:200])}")
        if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
            raise RuntimeError("authentication requested (this helper only does trust)")


async def connect(host: str, port: int, user: str, db: str, sem: asyncio.Semaphore):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        writer.write(startup(user, db))
        await asyncio.wait_for(until_ready(reader), 30)
        return reader, writer


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--hold", type=int, default=0)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--db", default="postgres")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.n + 100)), hard))

    sem = asyncio.Semaphore(64)
    try:
        conns = await asyncio.gather(
            *(connect(args.host, args.port, args.user, args.db, sem) for _ in range(args.n))
        )
    except Exception as exc:
        print(f"ERROR opening connections: {exc!r}", flush=True)
        return 1

    if args.once:
        for reader, writer in conns:
            writer.write(query("SELECT 1"))
            await until_ready(reader)
            writer.close()
        return 0

    print(f"READY {len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if cmd == "hold":
            held = conns[: args.hold]
            try:
                for _, writer in held:
                    writer.write(query("BEGIN; SELECT 1"))
                await asyncio.wait_for(
                    asyncio.gather(*(until_ready(reader) for reader, _ in held)), 60
                )
            except Exception as exc:
                print(f"ERROR hold: {exc!r}", flush=True)
                continue
            print(f"HELD {len(held)}", flush=True)
        elif cmd in ("quit", ""):
            break
    for _, writer in conns:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
