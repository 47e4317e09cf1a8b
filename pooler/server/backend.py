"""A server connection: one PostgreSQL backend, logged in, pooled and relayed to clients.

Two modes share one byte scanner:
- internal: the pooler itself talks to the server (login, reset, parameter sync); wanted
  messages are queued and awaited with `read()`;
- relay: a client is linked; every chunk is written to the client as it is and only
  ReadyForQuery, ParameterStatus, ErrorResponse and CopyInResponse are looked at. What they
  mean (what is still owed, answers of the pooler's own dropped, a batch replayed) is
  decided by `ServerRelay` (relay.py, sans-I/O), the base class of `ServerConnection`:
  `data_received` only performs what it decided.

Its life is a `ServerState` (lifecycle.py) moved by `become` alone.

Over 500 lines for a reason: one asyncio Protocol object per backend carries both modes
(the relay and the pooler's own exchanges: login, reset, resync, parameter sync, statement
tidying), which share its scanner, its transport and the counters of what the server owes
(the core's state: read per chunk, so kept on the one object, bench/relay_cost.py). The pooler's own exchanges (from `login` down) are the part
that could move to a module of their own, over a narrow interface (`send`, `read`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import time
from collections import deque
from typing import Protocol

from pooler.config import Config, Endpoint, Rule, Storage
from pooler.logs import LogContext, log
from pooler.protocol import auth, build, messages
from pooler.protocol.messages import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    COMMAND_COMPLETE,
    COPY_IN_RESPONSE,
    DATA_ROW,
    EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE,
    NOTICE_RESPONSE,
    PARAMETER_STATUS,
    PARSE_COMPLETE,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
)
from pooler.protocol.scanner import StreamError
from pooler.server import sockopts, tls as tls_support
from pooler.server.flow import BURST_READ, PEER_FULL, ReadGate, yield_turn
from pooler.server.lifecycle import SERVER_NEXT, ServerState, moved
from pooler.server.prepared import (
    ClientStatements,
    KnownStatements,
)
from pooler.server.relay import (
    ERRORS,
    IDLE,
    READY,
    REFUSED_LATE,
    STATEMENT_POOL_REFUSAL,
    TO_SERVER,
    ServerRelay,
)
from pooler.server.sockopts import TcpOptions
from pooler.server.stats import RouteStats
from pooler.sql import quote_ident, quote_literal

# Message types from the server: the names of pooler.protocol.messages (module constants:
# the relay compares them per message)
OWED_ANSWERS = frozenset(
    (READY_FOR_QUERY, ERROR_RESPONSE, COPY_IN_RESPONSE, PARSE_COMPLETE)
)  # never sent by an idle server unasked
MAX_STATEMENTS = 1000  # per server connection; the least recently used go beyond that
TERMINATE_WAIT = 5.0  # seconds a closing server has to end its session before it is cut
INTERNAL_WANTED = frozenset(ord(c) for c in "RSKZENCTDGHIAn123st")

SMART_DISCARD = (
    "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;CLOSE ALL;UNLISTEN *;"
    "SELECT pg_advisory_unlock_all();DISCARD PLANS;DISCARD SEQUENCES;DISCARD TEMP;"
)

_server_ids = itertools.count(1)


class BackendError(Exception):
    """The server refused us (an ErrorResponse during login or a reset query)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__(fields.get("M", "server error"))

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")


class ServerGone(Exception):
    """The server connection closed or timed out."""


_CLOSED = ServerState.CLOSED
_IDLE, _TAKEN, _ACTIVE, _RESET = (
    ServerState.IDLE,
    ServerState.TAKEN,
    ServerState.ACTIVE,
    ServerState.RESET,
)


def _cut(transport: asyncio.Transport) -> None:
    """A closing server did not end its session in time."""
    if not transport.is_closing():
        transport.abort()


_SAFE_SCHEMA = re.compile(r'\s*(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"|\$user)\s*')


def _set_value(name: str, value: str, smart_search_path: bool) -> str:
    """The value of a SET as SQL: a quoted literal, except, with smart_search_path_enquoting,
    a search_path that is a plain list of schema names (`a, "B", $user`): quoted as one literal
    it would name a single schema `"a, B"` (odyssey's option)."""
    if smart_search_path and name.lower() == "search_path":
        parts = value.split(",")
        if all(_SAFE_SCHEMA.fullmatch(part) for part in parts):
            return ", ".join(
                quote_literal(p.strip()) if p.strip() == "$user" else p.strip() for p in parts
            )
    return quote_literal(value)


class ServerWorker(Protocol):
    """What a server uses of its route's worker (`worker.Worker`)."""

    config: Config
    tcp_options: TcpOptions

    async def cancel_backend(self, server: ServerConnection) -> None: ...


class ServerRoute(Protocol):
    """What a server, and whoever holds it, use of its route (`pool.Route`)."""

    rule: Rule
    storage: Storage
    stats: RouteStats
    reset_query: str
    shares_statements: bool
    plan_epoch: int
    known_statements: KnownStatements

    @property
    def worker(self) -> ServerWorker: ...

    def release(self, server: ServerConnection) -> None: ...
    def discard(self, server: ServerConnection) -> None: ...
    def forget(self, server: ServerConnection) -> None: ...


class LinkedClient(Protocol):
    """What a server uses of the client it is linked to (`client.ClientConnection`): the
    relay writes to its transport and tells it what the answers said."""

    id: str
    mode: str | None
    transport: asyncio.Transport
    reading: ReadGate
    writing_paused: bool
    half_closed: bool
    params: dict[str, str]
    statements: ClientStatements | None  # its prepared statements (a stale copy's retry)

    def fatal(self, sqlstate: str, message: str) -> None: ...
    def refusal(self, message: str) -> bytes: ...
    def server_ready(self, server: ServerConnection) -> None: ...
    def server_error(self, server: ServerConnection, body: bytes) -> None: ...
    def server_lost(self, server: ServerConnection) -> None: ...


# How PostgreSQL spells the values of parameters it reports, as learned by `sync_params`
# ((name, value asked) -> value reported), for a transaction-pool login that reports them
# without a server: asyncpg asks for client_encoding 'utf-8', PostgreSQL says UTF8.
_SPELLINGS: dict[tuple[str, str], str] = {}
MAX_SPELLINGS = 1024
_ENCODING_NOISE = re.compile(r"[^0-9a-z]")


def spelled(name: str, value: str) -> str:
    """`value` of parameter `name` as PostgreSQL would report it, when known."""
    known = _SPELLINGS.get((name, value))
    if known is not None:
        return known
    if name == "client_encoding" and _ENCODING_NOISE.sub("", value.lower()) in ("utf8", "unicode"):
        return "UTF8"  # (PostgreSQL's clean_encoding_name; the one everybody asks for)
    return value


class ServerConnection(ServerRelay, asyncio.Protocol):
    """The adapter of a `ServerRelay` (relay.py: what the server owes, what its answers do)
    to a socket, plus the pooler's own exchanges with the server (login, reset, resync)."""

    __slots__ = (
        "_inbox",
        "_waiter",
        "backend_key",
        "client",
        "closed",
        "created",
        "endpoint",
        "holds_slot",
        "id",
        "internal",
        "login_notices",
        "login_params",
        "reading",
        "released_at",
        "route",
        "state",
        "storage",
        "transport",
    )

    def __init__(
        self, route: ServerRoute, endpoint: Endpoint, storage: Storage | None = None
    ) -> None:
        self.route = route
        self.endpoint = endpoint
        self.storage = storage or route.storage  # a listen's fallback storage, or the rule's
        ServerRelay.__init__(
            self, route.stats, route.known_statements, route.shares_statements, INTERNAL_WANTED
        )
        self.id = f"s{os.getpid() & 0xFFFF:04x}{next(_server_ids):08x}"
        self.transport: asyncio.Transport | None = None
        self.reading = ReadGate()  # paused while the linked client lags
        self._inbox: deque[tuple[int, bytes | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.client: LinkedClient | None = None
        self.login_params: dict[str, str] = {}
        self.login_notices: list[bytes] = []  # NoticeResponses of the login, not yet passed on
        self.backend_key = (0, 0)
        self.state = ServerState.LOGIN
        self.closed = False  # state is CLOSED (kept by `become` alone, read on every chunk)
        self.holds_slot = False  # counts against the route's global pool_size
        self.internal = True  # the pooler itself is talking to the server (login, reset...)
        self.created = time.monotonic()
        self.released_at = self.created

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.reading.transport = transport  # type: ignore[assignment]
        sockopts.apply(transport, self.route.worker.tcp_options)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not ServerState.CLOSED:
            self.become(ServerState.CLOSED)
        self._wake()
        client = self.client
        if client is not None:
            self.client = None
            client.server_lost(self)
        self.route.forget(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.reading.pause(PEER_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.reading.resume(PEER_FULL)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # closing: Terminate sent, waiting for the server to go
        try:
            events = self.scanner.feed(data)
        except StreamError as exc:
            log.error("server", f"malformed data from server: {exc}", self.log_context())
            self.close()
            return
        client = self.client
        if client is None:
            if not events:
                return
            if not self.internal and any(t in OWED_ANSWERS for t, _, _ in events):
                # An answer nobody asked for: the server is ahead of our count (the client
                # sent something PostgreSQL answered and we did not expect). Never reuse it.
                log.error("server", "unexpected answer from an idle server, closing it")
                self.desynced = True
                self.close()
                return
            self._inbox.extend((t, b) for t, b, _ in events)
            self._wake()
            return
        size = len(data)
        if size >= BURST_READ:
            yield_turn(self.reading)  # other connections, a cancel request, get their turn
        if self.uncut(client.mode, events, size):  # nothing to cut out: the client gets it first,
            if not client.transport.is_closing():  # the bookkeeping runs after (issue 19)
                client.transport.write(data)
            out = self.answers(data, events, client, True)  # (relay.py)
        else:
            out = self.answers(data, events, client, False)
        todo = self.todo
        if todo & ~READY:
            if todo & TO_SERVER:  # a batch replayed, output that waited for a check
                self._send(b"".join(self.to_server))
                self.to_server.clear()
            if todo & ERRORS:
                for body in self.errors:
                    client.server_error(self, body)
                self.errors.clear()
            if todo & REFUSED_LATE:
                client.fatal("0A000", STATEMENT_POOL_REFUSAL)
                self.route.discard(self)
                return
        if out and not client.transport.is_closing():  # (closing: its
            client.transport.write(out)  # connection_lost has not run yet)
        if todo & READY and (
            self.status == IDLE or client.mode != "transaction" or client.half_closed
        ):  # (a transaction pool's server stays linked inside a transaction: server_ready
            client.server_ready(self)  # would return at once, so it is not called per statement)

    def _send(self, data: bytes) -> None:
        """Write bytes of the pooler's own in the middle of a relayed exchange."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- internal mode ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> tuple[int, bytes | None]:
        """The next wanted message from the server (internal mode)."""
        while not self._inbox:
            if self.closed:
                raise ServerGone("server closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    def send(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ServerGone("server connection is closed")
        self.transport.write(data)

    def close(self) -> None:
        transport = self.transport
        if not self.closed and transport is not None:
            self.become(ServerState.CLOSED)
            if self.holds_slot and not transport.is_closing():
                # Terminate: PostgreSQL ends the session (after a query it runs) and closes
                # its end once the backend is gone; only then (connection_lost) is the slot
                # returned, so a route never has more backends than pool_size.
                transport.write(build.TERMINATE)
                asyncio.get_running_loop().call_later(TERMINATE_WAIT, _cut, transport)
            else:
                transport.close()
            self._wake()

    def log_context(self) -> LogContext:
        return LogContext(server_id=self.id, server_host=self.endpoint.host)

    # --- states -----------------------------------------------------------------------

    @property
    def owes_answers(self) -> bool:
        """Something sent to it is not answered yet: a query, an extended batch not ended
        by a Sync, a COPY IN."""
        return self.pending > 0 or self.unsynced or self.copy_in

    @property
    def reusable(self) -> bool:
        """The one test of "clean enough for the next client" (before the route's reset
        query): it owes no answer, is in no transaction, and was never out of step.
        (`ClientConnection.server_ready` spells it out once a transaction: change both.)"""
        return self.status == IDLE and not (
            self.pending > 0 or self.unsynced or self.copy_in or self.desynced
        )  # (`owes_answers` spelled out: this runs per transaction)

    def become(self, new: ServerState) -> None:
        """The one way a server changes state (a debug log line each time)."""
        old = self.state
        moved("server", old, new, SERVER_NEXT[old], self.log_context())
        self.state = new
        self.closed = new is _CLOSED

    async def login(self, user: str, database: str, password: str | auth.ScramKeys | None) -> None:
        """Run the startup exchange up to the first ReadyForQuery."""
        rule = self.route.rule
        params = {"user": user, "database": database}
        params.update(dict(rule.backend_startup_options))
        if tls_support.storage_wants_tls(self.storage, bool(self.endpoint.unix_socket_path)):
            await self._start_tls()
        self.send(build.startup_message(params))
        scram: auth.ScramClient | None = None
        while True:
            msg_type, body = await self.read()
            if body is None:
                raise ServerGone("oversized message during login")
            if msg_type == AUTHENTICATION:
                request = messages.decode_authentication(body)
                code, payload = request.code, request.data
                if code == messages.AUTH_OK:
                    continue
                if password is None:
                    raise BackendError(
                        {"C": "28P01", "M": f"password required for route '{rule.name}'"}
                    )
                if code == messages.AUTH_SASL and isinstance(password, auth.ScramKeys):
                    scram = auth.ScramClient(user, keys=password)
                    mechanism = scram.choose_mechanism(request.mechanisms)
                    self.send(build.sasl_initial_response(mechanism, scram.client_first()))
                    continue
                if code == messages.AUTH_SASL_CONTINUE and scram is not None:
                    self.send(build.sasl_response(scram.handle_server_first(payload)))
                elif code == messages.AUTH_SASL_FINAL and scram is not None:
                    scram.handle_server_final(payload)
                elif isinstance(password, auth.ScramKeys):
                    # SCRAM keys answer a SASL exchange only (taken above)
                    raise BackendError(
                        {"C": "28P01", "M": f"password required for route '{rule.name}'"}
                    )
                elif code == messages.AUTH_CLEARTEXT_PASSWORD:
                    if auth.password_kind(password) != "plain":
                        raise BackendError(
                            {
                                "C": "28P01",
                                "M": f"server wants a cleartext password for route "
                                f"'{rule.name}', only a hash is configured",
                            }
                        )
                    self.send(build.password_message(password))
                elif code == messages.AUTH_MD5_PASSWORD:
                    self.send(build.password_message(auth.md5_response(user, password, payload)))
                elif code == messages.AUTH_SASL:
                    if auth.password_kind(password) != "plain":
                        raise BackendError(
                            {
                                "C": "28P01",
                                "M": f"server wants SCRAM for route '{rule.name}', "
                                f"only an md5 hash is configured",
                            }
                        )
                    scram = auth.ScramClient(user, password)
                    mechanism = scram.choose_mechanism(request.mechanisms)
                    self.send(build.sasl_initial_response(mechanism, scram.client_first()))
                else:
                    raise BackendError(
                        {"C": "28000", "M": f"unsupported authentication request {code}"}
                    )
            elif msg_type == PARAMETER_STATUS:
                name, value = messages.decode_parameter_status(body)
                self.params[name] = value
            elif msg_type == BACKEND_KEY_DATA:
                self.backend_key = messages.decode_backend_key_data(body)
            elif (
                msg_type == NOTICE_RESPONSE
            ):  # e.g. a WARNING about a role's setting or a collation version
                self.login_notices.append(b"N" + (len(body) + 4).to_bytes(4, "big") + body)
            elif msg_type == ERROR_RESPONSE:
                raise BackendError(messages.decode_error_fields(body))
            elif msg_type == READY_FOR_QUERY:
                self.status = body[0]
                self.login_params = dict(self.params)
                self.scanner.wanted = self.relay_wanted
                self.internal = False
                self.become(ServerState.TAKEN)
                return

    async def _start_tls(self) -> None:
        """SSLRequest and handshake per the storage's `tls` (server/tls.py); a failure is a
        connect failure whose message reaches the client."""
        assert self.transport is not None
        try:
            transport = await tls_support.negotiate_storage(
                self.transport, self, self.storage, self.endpoint.host
            )
        except (tls_support.TLSConfigError, tls_support.TLSHandshakeError) as exc:
            message = f"failed to connect to remote server {self.endpoint}: {exc}"
            log.error("server", message, self.log_context())
            raise BackendError({"C": "08006", "M": message}) from None
        if transport is not None:
            self.transport = self.reading.transport = transport

    async def query(self, sql: str) -> None:
        """Run a simple query of our own and wait for its ReadyForQuery."""
        self.scanner.wanted = INTERNAL_WANTED
        self._inbox.clear()
        outer, self.internal = self.internal, True
        try:
            self.send(build.query(sql))
            error: BackendError | None = None
            answered = False
            while True:
                msg_type, body = await self.read()
                if msg_type == ERROR_RESPONSE and body is not None:
                    error = BackendError(messages.decode_error_fields(body))
                    answered = True
                elif msg_type in (COMMAND_COMPLETE, EMPTY_QUERY_RESPONSE, ROW_DESCRIPTION):
                    answered = True
                elif msg_type == PARAMETER_STATUS and body is not None:
                    name, value = messages.decode_parameter_status(body)
                    self.params[name] = value
                elif msg_type == READY_FOR_QUERY:
                    if not answered:  # a ReadyForQuery owed to someone else: out of step
                        self.desynced = True
                        self.close()
                        raise ServerGone("server answers are out of step")
                    self.status = body[0] if body else IDLE
                    break
        finally:
            self.internal = outer
        self.scanner.wanted = self.relay_wanted
        if error is not None:
            raise error

    async def fetch_row(
        self, sql: str, params: tuple[str, ...] | None = None
    ) -> list[str | None] | None:
        """Run a query of our own; its first row as text (None when there is no row).
        With `params` it goes through the extended protocol, the values bound as $1, $2...
        in text format: they never become part of the SQL text."""
        rows = await self.fetch_rows(sql, params, limit=1)
        return rows[0] if rows else None

    async def fetch_rows(
        self, sql: str, params: tuple[str, ...] | None = None, limit: int | None = None
    ) -> list[list[str | None]]:
        """Run a query of our own; its rows as text (the first `limit` of them)."""
        self.scanner.wanted = INTERNAL_WANTED
        self._inbox.clear()
        outer, self.internal = self.internal, True
        if params is None:
            self.send(build.query(sql))
        else:
            values = [value.encode() for value in params]
            self.send(
                build.parse("", sql)
                + build.bind("", "", (), values)
                + build.execute()
                + build.sync()
            )
        rows: list[list[str | None]] = []
        error: BackendError | None = None
        while True:
            msg_type, body = await self.read()
            if msg_type == DATA_ROW and body is not None and (limit is None or len(rows) < limit):
                rows.append(
                    [
                        None if cell is None else cell.decode("utf-8", "replace")
                        for cell in messages.decode_data_row(body)
                    ]
                )
            elif msg_type == ERROR_RESPONSE and body is not None:
                error = BackendError(messages.decode_error_fields(body))
            elif msg_type == READY_FOR_QUERY:
                self.status = body[0] if body else IDLE
                break
        self.internal = outer
        self.scanner.wanted = self.relay_wanted
        if error is not None:
            raise error
        return rows

    async def resync(self, *, rollback: bool) -> None:
        """Bring a server back in step whatever it still owes its departed client (answers
        in flight, an open COPY or extended batch, or answers we miscounted for a client
        that broke the protocol): end a COPY (CopyFail) and a batch (Sync), run a query of
        our own with a unique marker and drop everything before the marker's answer.
        `rollback` ends an open transaction too (ROLLBACK first, in the same query, so an
        aborted transaction cannot refuse the marker); without it the marker only comes
        back outside an aborted transaction."""
        marker = f"pooler resync {secrets.token_hex(8)}"
        sql = f"SELECT '{marker}'"
        self.scanner.wanted = INTERNAL_WANTED
        self.send(
            build.copy_fail("client disconnected")
            + build.sync()
            + build.query(f"ROLLBACK; {sql}" if rollback else sql)
        )
        statements = self.statements
        expected = [marker.encode()]
        found = False
        while True:
            msg_type, body = await self.read()
            if msg_type == PARSE_COMPLETE:
                statements.on_parse_complete()  # a Parse the client sent succeeded
            elif msg_type == READY_FOR_QUERY:
                statements.on_ready(body[0] if body else IDLE)  # unanswered Parses failed
                if found:
                    self.status = body[0] if body else IDLE
                    break
            elif msg_type == DATA_ROW and body is not None:
                found = messages.decode_data_row(body) == expected
            elif msg_type == PARAMETER_STATUS and body is not None:
                name, value = messages.decode_parameter_status(body)
                self.params[name] = value
        self.pending = 0
        self.copy_in = self.unsynced = self.desynced = False
        self.scanner.wanted = self.relay_wanted

    async def sync_params(self, wanted: dict[str, str]) -> None:
        """Make the server's session parameters those the client expects (maintain_params).

        A parameter PostgreSQL reports (one it sent at login) keeps the value it reports,
        in `wanted` too: its own spelling, as a direct client would see it (asyncpg asks
        for client_encoding `'utf-8'`, PostgreSQL says `UTF8`)."""
        smart = self.route.worker.config.smart_search_path_enquoting
        sets = [
            f"SET {quote_ident(name)} TO {_set_value(name, value, smart)}"
            for name, value in wanted.items()
            if self.params.get(name) != value
        ]
        if sets:
            await self.query(";".join(sets))
            reported = self.login_params
            for name, value in wanted.items():
                if name in reported:
                    wanted[name] = spelling = self.params[name]
                    if spelling != value:
                        if len(_SPELLINGS) >= MAX_SPELLINGS:
                            _SPELLINGS.clear()
                        _SPELLINGS[name, value] = spelling
                else:
                    self.params[name] = value

    async def reset(self, *, client_gone: bool) -> bool:
        """Make the server fit for the next client (odyssey's detach sequence).

        Returns False when the server must be closed instead of reused.
        """
        self.internal = True
        try:
            return await self._reset(client_gone)
        finally:
            self.internal = False

    async def _reset(self, client_gone: bool) -> bool:
        rule = self.route.rule
        if self.owes_answers or self.desynced:
            if not client_gone:
                return False
            if self.pending > 0 or self.unsynced:  # a query may still run: cancel it
                if not rule.pool_cancel:
                    return False
                await self.route.worker.cancel_backend(self)
            await self.resync(rollback=rule.pool_rollback)
        if self.status != IDLE:
            if not rule.pool_rollback:
                return False
            await self.query("ROLLBACK")
        self.statements.reset()  # (dooms what a transaction we rolled back prepared)
        reset_sql = self.route.reset_query
        if reset_sql:
            self.params = dict(self.login_params)
            await self.query(reset_sql)
        return self.status == IDLE

    @property
    def statements_untidy(self) -> bool:
        """Does `tidy_statements` have work to do before the server is lent again?"""
        statements = self.statements
        return (
            statements.plan_epoch != self.route.plan_epoch
            or len(statements.names) > MAX_STATEMENTS
            or bool(statements.doomed)
        )

    async def tidy_statements(self) -> None:
        """Drop prepared statements that a schema change made stale (the route's plan epoch
        moved), that a rolled-back transaction doomed, or that exceed the per-connection
        cache."""
        statements = self.statements
        if statements.plan_epoch != self.route.plan_epoch:
            if statements.names:
                await self.query("DEALLOCATE ALL")
            statements.forget_all()
            statements.plan_epoch = self.route.plan_epoch
            return
        names = [name for name in statements.doomed if name in statements.names]
        for name in names:
            del statements.names[name]
        statements.doomed.clear()
        if len(statements.names) > MAX_STATEMENTS:
            excess = len(statements.names) - MAX_STATEMENTS * 3 // 4
            names += [statements.names.popitem(last=False)[0] for _ in range(excess)]
        if names:
            await self.query(";".join(f"DEALLOCATE {name}" for name in names))

    def link(self, client: LinkedClient, now: float) -> None:
        """Lend the server to `client` (at monotonic time `now`)."""
        state = self.state
        if (state is _IDLE or state is _TAKEN) and not log.debug_enabled:
            self.state = _ACTIVE  # (`become`'s check, inline on the hot path)
        else:
            self.become(_ACTIVE)
        statements = self.statements
        if (  # (a server given back as it was is settled already: every batch answered)
            statements.batches_sent != statements.batches_done
            or statements.stale_errors_due
            or statements.in_xact
        ):
            statements.reset()
        self.held = None
        self.tail = b""
        self.client = client
        if client.writing_paused:  # the client still has not taken its last answers
            self.reading.pause(PEER_FULL)
        self.pending = 0
        self.xact_started = now  # query_started is set as the first query goes
        self.scanner.wanted = self.relay_wanted

    def unlink(self) -> None:
        """The server leaves its client (or the pooler's own use) on its way back."""
        state = self.state
        if state is _ACTIVE or state is _RESET:
            if log.debug_enabled:
                self.become(_TAKEN)
            else:
                self.state = _TAKEN  # (`become`'s check, inline on the hot path)
        client = self.client
        if client is not None:  # (`_end_link`, inline on the hot path)
            self.client = None
            if client.reading.causes & PEER_FULL:
                client.reading.resume(PEER_FULL)
        if self.reading.causes:
            self.reading.resume(PEER_FULL)
        self.released_at = time.monotonic()  # (`held` is emptied by the next `link`)

    def taken(self) -> None:
        """Out of the idle list (for a client, or for the pooler's own use)."""
        self.become(ServerState.TAKEN)

    def pooled(self) -> None:
        """Into the idle list."""
        if self.state is _TAKEN and not log.debug_enabled:
            self.state = _IDLE  # (`become`'s check, inline on the hot path)
        else:
            self.become(_IDLE)

    def _end_link(self) -> None:
        """The link to the client ends: whatever either side paused for the other ends
        with it (the next user of either connection must find it reading)."""
        client = self.client
        self.client = None
        if self.reading.causes:
            self.reading.resume(PEER_FULL)
        if client is not None and client.reading.causes & PEER_FULL:
            client.reading.resume(PEER_FULL)

    def detach(self) -> None:
        """Take the server from its client for a reset of the pooler's own. From this moment
        its output is kept for the reset (which drains what is still owed), never relayed: a
        late ReadyForQuery relayed to the departed client would release the server a second
        time while the reset is still under way."""
        if self.state is not ServerState.RESET:
            self.become(ServerState.RESET)
        self._end_link()
        self.internal = True
