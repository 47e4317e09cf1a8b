"""When a worker may close a client: between transactions (a retiring or stopping worker),
or past its rule's idle timeouts (the worker's cron)."""

from __future__ import annotations

from pooler.server.backend import IDLE
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import BETWEEN_TRANSACTIONS, RELAYING


def between_transactions(client: ClientConnection) -> bool:
    """Nothing of the client's is in flight: no transaction open, no query sent and waiting
    for a server (closing it now cuts nothing)."""
    if client.state not in BETWEEN_TRANSACTIONS:
        return False  # a query waits for a server, or the login is not over
    if client.pending_begin:
        return False  # virtual_transaction: its BEGIN was answered, it holds no server yet
    server = client.server
    return server is None or (server.status == IDLE and server.pending == 0)


def check_client_timeouts(client: ClientConnection, now: float) -> None:
    """Close a client idle past its rule's pool_client_idle_timeout, or idle in a transaction
    past pool_idle_in_transaction_timeout (the worker's cron, every second)."""
    rule = client.rule
    if rule is None or client.state not in RELAYING:
        return
    idle_for = now - client.last_activity
    server = client.server
    # (a virtual_transaction BEGIN answered and not yet run is a transaction to its client)
    in_transaction = client.pending_begin or (server is not None and server.status != IDLE)
    if server is not None and server.pending:
        return
    if in_transaction:
        limit = rule.pool_idle_in_transaction_timeout
        if limit and idle_for > limit:
            client.fatal("25P03", "idle transaction timeout")
    else:
        limit = rule.pool_client_idle_timeout
        if limit and idle_for > limit:
            client.fatal("08006", "Connection was dropped by pooler due to idle timeout")
