"""A client connection, after its login (login.py hands it over): relaying through a pool.

`data_received` relays bytes straight to the linked server (or queues them while a server
is being acquired), looking only at message headers to know when the server can be given
back: after a ReadyForQuery that leaves no answer owed, no extended-protocol batch open, no
COPY running and, in transaction mode, no transaction open. Its life is a `ClientState`
(lifecycle.py) moved by `become` alone; while it logs in (or talks to the console), its
bytes go to its `login`.

What each relayed message means (what the server will owe, prepared statements renamed, a
statement pool's BEGIN refused, a batch kept for a retry) is decided by `ClientRelay`
(relay.py, sans-I/O), the base class of `ClientConnection`: `_forward` only performs what it
decided (writes, close, the server given back).

Over 500 lines for a reason: the relay's per-message path (`data_received` →
`_queue`/`_forward` → `ClientRelay.requests`, then `server_ready`) is kept in one object on
purpose: each call or attribute hop there is paid per transaction (bench/relay_cost.py).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from pooler.config import Config, Listen
from pooler.logs import log
from pooler.protocol import ProtocolError, auth, build, messages
from pooler.protocol.framing import (
    iter_messages,
)
from pooler.protocol.messages import (
    PARSE,
    QUERY,
    SYNC,
)
from pooler.server import sockopts, virtual
from pooler.server.backend import (
    MAX_STATEMENTS,
    BackendError,
    ServerConnection,
    ServerGone,
)
from pooler.server.connect import TOO_MANY_CONNECTIONS, ConnectFailed
from pooler.server.drain import Drain
from pooler.server.flow import (
    BURST_READ,
    PEER_FULL,
    QUEUE_FULL,
    ReadGate,
    yield_turn,
)
from pooler.server.lifecycle import CLIENT_NEXT, RELAYING, ClientState, moved
from pooler.server.pool import HandOff, PoolTimeout, Route
from pooler.server.prepared import is_stale_statement_error
from pooler.server.relay import (
    ANSWERED,
    IDLE,
    OWED_NOTHING,
    TERMINATE_SEEN,
    ClientRelay,
    query_text as _query_text,
)
from pooler.server.sockopts import TcpOptions
from pooler.server.stats import BUCKETS, TABULATED

if TYPE_CHECKING:
    from pooler.server.ldap_auth import LdapLogin

HALF_CLOSE_GRACE = 2.0  # seconds a half-closed client's answers are waited for (eof_received)
MAX_QUEUED = 256 * 1024  # bytes held for a client waiting for a server; then it is paused
TERMINATE_MESSAGE = build.TERMINATE  # a whole Terminate, as a client sends it

_STARTUP, _LOGIN_WAITING, _CANCEL, _CONSOLE, _IDLE, _WAITING, _LINKED, _CLOSED = ClientState


def _whole_messages(data: bytes) -> bool:
    """Is `data` a run of whole typed messages (some)?"""
    pos, n = 0, len(data)
    while n - pos >= 5:
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5])
    return 0 < pos == n


_client_ids = itertools.count(1)


def _process_id_prefix() -> str:
    """A client id's start: "c" and this process's pid (its low 16 bits)."""
    return f"c{os.getpid() & 0xFFFF:04x}"


def _forked() -> None:
    global _id_prefix
    _id_prefix = _process_id_prefix()


_id_prefix = _process_id_prefix()
os.register_at_fork(after_in_child=_forked)


class ClientWorker(Protocol):
    """What a client uses of its worker (`worker.Worker`)."""

    config: Config
    tcp_options: TcpOptions
    accepted_tcp_options: bool  # a TCP client's socket has them from its listening socket
    drain: Drain | None  # an online restart's drain (pooler/server/drain.py)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def client_connected(self, client: ClientConnection) -> None: ...
    def client_disconnected(self, client: ClientConnection) -> None: ...
    def start_login(self, client: ClientConnection) -> ClientLogin: ...
    def count_error(self, kind: str) -> None: ...
    def release_client_slot(self, key: tuple[Any, ...]) -> None: ...
    def give_back(
        self, server: ServerConnection, client_gone: bool = False, unusable: bool = False
    ) -> None: ...
    def transaction_ended(self, client: ClientConnection) -> None: ...


class ClientLogin(Protocol):
    """What a client uses of its login (`login.Login`), while it logs in or talks to the
    console."""

    buf: bytearray  # what the client sent, not read yet

    def received(self, data: bytes) -> None: ...
    def wake(self) -> None: ...
    def lost(self) -> None: ...


class ClientConnection(ClientRelay, asyncio.Protocol):
    """The adapter of a `ClientRelay` (relay.py: how the client's messages go to its server)
    to a socket and a pool, after its login."""

    # Slots, not a __dict__: with this many fields an instance's dict is not shared with its
    # class's (more than 30 keys), about 1.6 KB per client; slots take 8 bytes a field. A new
    # field is named here (those of the relay's core in `ClientRelay.__slots__`).
    __slots__ = (
        "_attach_owns",
        "_attach_task",
        "_eof_timer",
        "_handoff",
        "_handoff_kept",
        "_lost",
        "_wait_noticed",
        "_wait_started",
        "_wait_timer",
        "asked_at",
        "client_slots",
        "closed_from",
        "connected_at",
        "database",
        "half_closed",
        "intercepts",
        "key",
        "last_activity",
        "ldap_login",
        "listen",
        "login",
        "looked_up",
        "password",
        "peer",
        "pending_begin",
        "queued",
        "queued_bytes",
        "reading",
        "ready_at",
        "route",
        "scram_keys",
        "server",
        "slow_attach",
        "state",
        "steer",
        "told_fatal",
        "transport",
        "tsa_hint",
        "unix",
        "user",
        "worker",
        "writing_paused",
    )

    def __init__(self, worker: ClientWorker, listen: Listen, unix: bool) -> None:
        ClientRelay.__init__(
            self,
            f"{_id_prefix}{next(_client_ids):08x}",
            worker.config.client_max_buffer,
            worker.config.log_query,
        )  # (id, splitter, statements, rule, mode, params, pinned, log_ctx)
        self.worker = worker
        self.listen = listen
        self.unix = unix
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: tuple[str, int] | None = None
        self.state = _STARTUP  # moved by `become` alone (lifecycle.CLIENT_NEXT)
        self.closed_from: ClientState | None = None  # the state it closed from
        self.login: ClientLogin | None = None  # until the login hands the client over
        self._attach_task: asyncio.Task[None] | None = None
        self._attach_owns = False  # the attach task holds a handed server or a granted slot
        self._handoff: HandOff | None = None  # waiting for a server without a task
        self._handoff_kept: HandOff | None = None  # ... made at its first wait, reused
        self.queued: list[bytes] = []
        self.queued_bytes = 0
        self.route: Route | None = None
        self.server: ServerConnection | None = None
        self.user = ""
        self.database = ""
        self.password: str | None = None  # the client's cleartext password, when it sent one
        self.scram_keys: auth.ScramKeys | None = None  # from the client's SCRAM proof
        self.looked_up: str | None = None  # the secret auth_query returned
        self.ldap_login: LdapLogin | None = None  # set by an LDAP check
        self.key = (0, 0)
        self.client_slots: list[tuple[object, ...]] = []  # client_max counts we hold
        self.reading = ReadGate()  # paused while the server lags or the queue is full
        self.writing_paused = False  # the client's transport is full (pause_writing)
        self.asked_at = 0.0  # when it last asked for a server (monotonic; see waiting_since)
        self.connected_at = time.monotonic()
        self.last_activity = self.connected_at
        self.ready_at = self.connected_at  # when its login was over (an online restart's drain)
        self.intercepts = False  # some simple queries are answered or rewritten (virtual.py)
        self.tsa_hint: str | None = None  # SET odyssey.target_session_attrs
        self.steer: str | None = None  # its target_session_attrs where the rule's differs
        self.pending_begin = False  # virtual_transaction: a BEGIN answered, not yet run
        self.slow_attach = False  # steer or pending_begin: servers come through the task path
        self.half_closed = False  # sent EOF with answers owed: closed once they are relayed
        self._eof_timer: asyncio.TimerHandle | None = None  # ... or HALF_CLOSE_GRACE after
        self._lost = False  # connection_lost ran
        self._wait_timer: asyncio.TimerHandle | None = None  # pool_notice_after_waiting_ms
        self._wait_started = 0.0
        self._wait_noticed = False  # "waiting for free backend connection" was sent
        self.told_fatal = False  # a server's FATAL was relayed: PostgreSQL said why it ends

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.reading.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if not self.unix and isinstance(peer, tuple):
            self.peer = (peer[0], peer[1])
            self.log_ctx.peer_host, self.log_ctx.peer_port = self.peer
        self.worker.client_connected(self)
        if not self.unix and not self.worker.accepted_tcp_options:
            sockopts.apply(transport, self.worker.tcp_options)
        self.login = self.worker.start_login(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in RELAYING:
            self.last_activity = self.arrived = time.monotonic()
            if len(data) >= BURST_READ:
                yield_turn(self.reading)  # (a large COPY IN): the others get their turn
            server = self.server
            if self.intercepts and data[0] == QUERY and self._virtual(server, data):
                return
            if server is not None:
                self._forward(server, data)
            else:
                self._queue(data)
            return
        if state is _CLOSED:
            return
        if self.login is not None:  # logging in, or a console session
            self.login.received(data)

    def eof_received(self) -> bool:
        """The client half-closed (shutdown(SHUT_WR)) after its requests: as from PostgreSQL,
        it gets the answers to what it sent, then the connection closes (`_done_after_eof`,
        `server_ready`). With nothing owed, in COPY IN (which cannot end now) or over TLS,
        it closes at once. An EOF cannot be told from a client that died (its socket closed
        whole): answers that take longer than HALF_CLOSE_GRACE are not waited for, the
        server is cancelled and reset as for any client gone (pgbouncer and odyssey do so at
        once; PostgreSQL runs the query to its end)."""
        if self.state is _CLOSED or self.transport.get_extra_info("ssl_object") is not None:
            return False
        server = self.server
        if self.state not in RELAYING:  # requests pipelined behind the login, still unread
            owed = self.login is not None and bool(self.login.buf)
        elif server is not None:  # (half a message is never answered: nor is what it ends)
            owed = server.pending > 0 and not server.copy_in and self.splitter.at_boundary()
        else:
            owed = _whole_messages(b"".join(self.queued))
        if not owed:
            return False
        self.half_closed = True
        self._eof_timer = asyncio.get_running_loop().call_later(HALF_CLOSE_GRACE, self.close)
        if self.login is not None:
            self.login.wake()
        return True

    def _done_after_eof(self) -> None:
        """After the client's EOF: close once nothing it sent is left to answer."""
        server = self.server
        if server is not None:
            done = server.pending == 0
        else:
            done = not self.queued and self._attach_task is None and self._handoff is None
        if done:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # (called by _start_tls when the handshake had the socket)
            return
        self._lost = True
        self._to_closed()
        if self.login is not None:
            self.login.lost()
        if self._attach_task is not None and not self._attach_task.done() and not self._attach_owns:
            # (a task that owns a handed server or a granted slot is not cancelled: it may
            # not have started yet, and only it can give them back; it sees CLOSED)
            self._attach_task.cancel()
        if self._handoff is not None:
            self._stop_waiting()
        self._handoff_kept = None  # (it holds bound methods of this client: no cycle left)
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        if self._eof_timer is not None:
            self._eof_timer.cancel()
        server = self.server
        if server is not None:
            self.server = None
            self.worker.give_back(server, client_gone=True, unusable=self.leaves_server_unusable())
        # what it held goes back now, not when a garbage collection breaks the cycles
        self.splitter.buffer = b""
        self.queued.clear()
        self.queued_bytes = 0
        if self.route is not None:
            self.route.clients -= 1
        for key in self.client_slots:
            self.worker.release_client_slot(key)
        self.worker.client_disconnected(self)
        if self.closed_from in RELAYING and self.worker.config.log_session:
            log.info(
                "main",
                f"client disconnected, route {self.rule.name if self.rule else '-'}, "
                f"working time: {int((time.monotonic() - self.connected_at) * 1e6)}us",
                self.log_ctx,
            )

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.server is not None:
            self.server.reading.pause(PEER_FULL)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.server is not None:
            self.server.reading.resume(PEER_FULL)
        if self.login is not None:  # a console session waiting for the client to read
            self.login.wake()

    # --- errors -----------------------------------------------------------------------

    def fatal(
        self,
        sqlstate: str,
        message: str,
        *,
        prefix: bool = True,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        """Send a FATAL ErrorResponse and close the connection."""
        if not self._to_closed():
            return
        text = self._prefix() + message if prefix else message
        log.error("client", message, self.log_ctx)
        self._send(build.error_response("FATAL", sqlstate, text, detail, hint))
        self.transport.close()

    def _send(self, data: bytes) -> None:
        """Write to the client unless its connection is already closing (a login step or a
        local answer can finish after the client left or was refused)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self._to_closed():
            self.transport.close()

    @property
    def closing(self) -> bool:
        """Closing or closed: nothing more is read, written or asked for it."""
        return self.state is _CLOSED

    def become(self, new: ClientState) -> None:
        """The one way a client changes state (a debug log line each time; the moves made
        per transaction are checked inline by their callers, see lifecycle.py)."""
        old = self.state
        moved("client", old, new, CLIENT_NEXT[old], self.log_ctx)
        self.state = new

    def _to_closed(self) -> bool:
        """Any state -> closed; False when it was closed already."""
        state = self.state
        if state is _CLOSED:
            return False
        self.closed_from = state
        if log.debug_enabled:
            self.become(_CLOSED)
        else:  # (any state -> closed: `become`'s check, inline, once a connection)
            self.state = _CLOSED
        return True

    @property
    def logged_in(self) -> bool:
        """Past its login: relayed (or waiting for a server), or a console session."""
        state = self.state
        return state in RELAYING or state is _CONSOLE

    def peer_name(self, *, port: bool = True) -> str:
        """The client's address as odyssey prints it: `1.2.3.4:5678`, `[::1]:5678`, or
        `<unix socket>`."""
        if self.peer is None:
            return "<unix socket>"
        host, peer_port = self.peer
        if not port:
            return host
        return f"[{host}]:{peer_port}" if ":" in host else f"{host}:{peer_port}"

    def backend_password(self) -> str | auth.ScramKeys | None:
        """What answers the server's password request (odyssey's order): storage_password,
        the client's own password with password_passthrough, the rule's password (plain, or
        an md5 hash, which answers md5 requests), the password the client sent."""
        rule = self.rule
        assert rule is not None
        if self.ldap_login is not None and self.ldap_login.storage_password is not None:
            return self.ldap_login.storage_password  # ldap_storage_credentials
        if rule.storage_password:
            return rule.storage_password
        if rule.password_passthrough and self.password is not None:
            return self.password
        if rule.password and auth.password_kind(rule.password) != "scram":
            return rule.password
        if self.password is None and self.scram_keys is not None:
            return self.scram_keys  # SCRAM pass-through
        if self.password is None and self.looked_up and auth.password_kind(self.looked_up) == "md5":
            return self.looked_up  # an md5 secret from auth_query answers md5 requests
        return self.password

    # --- relay ------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        """Hold bytes while a server is acquired (transaction and statement pools): idle
        -> linked (an idle server fits at once), or idle -> waiting."""
        route = self.route
        assert route is not None
        first = self.state is _IDLE
        if first:
            if data == TERMINATE_MESSAGE:  # goodbye between transactions: no server needed
                self.close()
                return
            if data[0] == PARSE and self.statements is not None and self._answer_locally(data):
                return  # (_answer_locally declines at once unless Parses and Syncs only)
            if route.idle and self._attach_idle(data):  # (none idle: it waits)
                return
            if log.debug_enabled:  # (idle -> waiting: `become`'s check, inline)
                self.become(_WAITING)
            else:
                self.state = _WAITING
            self.asked_at = self.last_activity  # (later bytes do not restart the wait)
        elif self.state is not _WAITING:
            return  # closed
        self.queued.append(data)
        self.queued_bytes += len(data)
        if self.queued_bytes > MAX_QUEUED:  # read no more until a server takes it
            self.reading.pause(QUEUE_FULL)
        if self._attach_task is not None or self._handoff is not None:
            return
        if not first and self.statements is not None and self.queued[0][0] == PARSE:
            data = self.queued[0] if len(self.queued) == 1 else b"".join(self.queued)
            if self._answer_locally(data):
                self.queued.clear()
                self.queued_bytes = 0
                self.reading.resume(QUEUE_FULL)
                self.become(_IDLE)
                return
        # No idle server: wait in the route's queue for the next one released (the common
        # case under load), which `_handed` links in the releasing callback. Routes without a
        # pool_size and paused routes take the task path.
        if route.idle or not route.limited or route.paused or self.slow_attach:
            self._attach_task = self.worker.spawn(self._attach(), f"attach {self.id}")
            return
        handoff = self._handoff_kept
        if handoff is None:  # (one per client, not one per wait: see HandOff)
            handoff = self._handoff_kept = HandOff(self._handed, self._handoff_timed_out)
        route.wait(handoff, self.asked_at)
        self._handoff = handoff
        if route.rule.pool_notice_after_waiting_ms >= 0:
            self._waiting()

    @property
    def waiting_since(self) -> float | None:
        """When this client asked for a server it has not got yet; None when it is not
        waiting. The one definition of waiting: cl_waiting and maxwait (SHOW POOLS, /metrics,
        the dashboard) and the `waiting` state and wait of SHOW CLIENTS all come from it."""
        state = self.state
        if state is _WAITING or state is _LOGIN_WAITING:
            return self.asked_at
        return None

    def _attach_idle(self, data: bytes) -> bool:
        """The fast path: an idle server that needs no preparation is linked at once."""
        route = self.route
        assert route is not None
        if self.slow_attach or not route.idle:
            return False  # (steered, or a virtual BEGIN to run: the task path)
        server = route.next_idle()
        if server is None or not self._fits_as_is(server):
            return False  # the slow path prepares it first
        route.idle.pop()
        route.busy.add(server)
        server.link(self, self.last_activity)  # the client's bytes came in just now
        self.server = server
        if log.debug_enabled:  # (idle -> linked: `become`'s check, inline on the hot path)
            self.become(_LINKED)
        else:
            self.state = _LINKED
        self._forward(server, data)
        route.stats.wait_hist[0] += 1  # (`record_wait(0)`, inline; after the write: the
        # server has the bytes sooner)
        return True

    def _fits_as_is(self, server: ServerConnection) -> bool:
        """Can the server be linked without `_sync`: the client's session parameters already
        set on it, and no statements to tidy?"""
        if self.statements is not None:  # (`server.statements_untidy`, spelled out)
            statements = server.statements
            if (
                statements.plan_epoch != server.route.plan_epoch
                or statements.doomed
                or len(statements.names) > MAX_STATEMENTS
            ):
                return False
        return self.params.items() <= server.params.items()

    def _stop_waiting(self, now: float | None = None) -> None:
        """The wait without a task is over (at monotonic time `now`; None: now)."""
        handoff = self._handoff
        route = self.route
        assert handoff is not None and route is not None
        self._handoff = None
        if not handoff.settled:
            route.stop_waiting(handoff)
        route.record_wait(handoff.started, now)
        if self._wait_timer is not None or self._wait_noticed:
            self._waited()

    def _waiting(self) -> None:
        """The client queues for a server: pool_notice_after_waiting_ms tells it so."""
        rule = self.rule
        if rule is not None and rule.pool_notice_after_waiting_ms >= 0 and not self._wait_timer:
            self._wait_started = time.monotonic()
            self._wait_timer = asyncio.get_running_loop().call_later(
                rule.pool_notice_after_waiting_ms / 1000, self._waiting_notice
            )

    def _waiting_notice(self) -> None:
        self._wait_timer = None
        self._wait_noticed = True
        self._send(build.notice_response("NOTICE", "00000", "waiting for free backend connection"))

    def _waited(self) -> None:
        """The wait is over (odyssey then says how long it took, if it said it waited)."""
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        if self._wait_noticed:
            self._wait_noticed = False
            took = int((time.monotonic() - self._wait_started) * 1000)
            self._send(build.notice_response("NOTICE", "00000", f"waiting took {took} ms"))

    def _handoff_timed_out(self) -> None:
        if self._handoff is not None:
            self._stop_waiting()
            self._pool_timeout()

    def _handed(self, server: ServerConnection | None) -> None:
        """A server (or, as None, a slot for a new one) for the waiting client."""
        route = self.route
        assert route is not None
        # one clock read for the wait and the link: a server's release made it (`unlink`)
        now = time.monotonic() if server is None else server.released_at
        handoff = self._handoff
        if (
            handoff is not None
            and handoff.settled
            and self._wait_timer is None
            and not self._wait_noticed
        ):  # (`_stop_waiting`'s common case, inline: handed over, no timer, nothing told)
            self._handoff = None
            waited = int((now - handoff.started) * 1e6)
            stats = route.stats  # (`record_wait`, inline: once a waiting transaction)
            stats.wait_time_us += waited
            stats.wait_hist[
                BUCKETS[waited]
                if 0 <= waited < TABULATED
                else ((b := waited.bit_length()) << 3) | ((waited >> (b - 4)) & 7)
            ] += 1  # (waits under load often pass the table's 4 ms: no `bucket_of` call)
            if waited > stats.max_wait_us:
                stats.max_wait_us = waited
        else:
            self._stop_waiting(now)
        if self.state is _CLOSED:  # it left as the server came
            if server is None:
                route.worker.slots.release(route.slot_key)
            else:
                route.release(server)
        elif server is None:  # a slot: connecting takes a task
            self._attach_owns = True
            self._attach_task = self.worker.spawn(self._attach(slot=True), f"attach {self.id}")
        elif not self._fits_as_is(server):  # it needs preparing first (`_sync`)
            self._attach_owns = True
            self._attach_task = self.worker.spawn(self._attach(server), f"attach {self.id}")
        else:
            self._link(server, now)

    def _link(self, server: ServerConnection, now: float | None = None) -> None:
        """Link a ready server (at monotonic time `now`; None: now) and relay what the
        client sent meanwhile (waiting -> linked)."""
        if now is None:
            now = time.monotonic()
        server.link(self, now)
        self.server = server
        if self.state is _WAITING and not log.debug_enabled:
            self.state = _LINKED  # (`become`'s check, inline on the hot path)
        else:
            self.become(_LINKED)
        queued = self.queued
        data = queued[0] if len(queued) == 1 else b"".join(queued)
        queued.clear()
        self.queued_bytes = 0
        if self.reading.causes:
            self.reading.resume(QUEUE_FULL)
        self.arrived = now  # (its queries start now: the wait is not theirs)
        self._forward(server, data)

    def _virtual(self, server: ServerConnection | None, data: bytes) -> bool:
        """A lone simple Query the pooler answers or rewrites (pooler/server/virtual.py):
        True when it was taken care of here."""
        if not self.splitter.lone(data):
            return False  # not exactly one whole Query
        if server is not None and server.owes_answers:
            return False  # answers are owed first
        if self.queued or self._handoff is not None or self._attach_task is not None:
            return False
        text = _query_text(data, 0, len(data))
        if (
            server is None
            and self.mode == "transaction"
            and virtual.is_bare_begin(text)
            and virtual.transaction_on(self.worker.config)
        ):
            if self.pending_begin:
                return False  # PostgreSQL warns of the transaction in progress, as odyssey
            self.pending_begin = self.slow_attach = True
            self._send(virtual.BEGIN_ANSWER)
            return True
        statement = virtual.parse(text)
        rule = self.rule
        if statement is None or rule is None:
            return False
        status = (
            server.status
            if server is not None
            else (virtual.IN_TRANSACTION if self.pending_begin else IDLE)
        )
        if statement.name == virtual.TARGET_SESSION_ATTRS and self.worker.config.virtual_processing:
            if statement.verb == "show":
                answer = virtual.show_answer(statement.name, self.target_session_attrs(), status)
            elif (statement.value or "").lower() in virtual.TSA_VALUES:
                self.tsa_hint = (statement.value or "").lower()
                self.steer = self._steering()
                self.slow_attach = self.steer is not None or self.pending_begin
                answer = virtual.set_answer(status)
            else:
                answer = virtual.set_refused(statement.name, statement.value or "", status)
            self._send(answer)
            return True
        if (
            statement.verb == "set"
            and statement.name == "application_name"
            and rule.application_name_add_host
        ):
            sql = virtual.application_name_query(statement.value or "", self.peer_name(port=False))
            if server is not None:
                self._forward(server, build.query(sql))
            else:
                self._queue(build.query(sql))
            return True
        return False

    def _steering(self) -> str | None:
        """The kind of host this client's servers must be on, where it differs from what its
        rule gives every client (its listen's target_session_attrs, its own SET): such a
        client takes its servers through `Route.acquire(steer=...)`, never the fast path."""
        rule = self.rule
        wanted = self.target_session_attrs()
        return None if rule is None or wanted == (rule.target_session_attrs or "any") else wanted

    def target_session_attrs(self) -> str:
        """The client's own (SET odyssey.target_session_attrs), else its listen's, else its
        rule's, else `any` (odyssey's order)."""
        rule = self.rule
        return (
            self.tsa_hint
            or self.listen.target_session_attrs
            or (rule.target_session_attrs if rule is not None else None)
            or "any"
        )

    def _answer_locally(self, data: bytes) -> bool:
        """Parse + Sync of statements the route already knows need no server: answer them
        here. (A client that prepares synchronously while others hold every server, as
        pgbench -M prepared does, would otherwise wait for a server it does not need.)"""
        assert self.statements is not None
        if self.pending_begin:
            return False  # (its answer would say idle: the server runs BEGIN first)
        second = 1 + int.from_bytes(data[1:5])  # where the message after the first Parse starts
        if second < len(data) and data[second] not in (PARSE, SYNC):
            return False  # a Bind or an Execute follows: it needs a server (the usual case)
        try:
            answer = self.statements.answer_locally(iter_messages(data))
        except ProtocolError:  # incomplete or malformed: the normal path waits or refuses
            return False
        if answer is None:
            return False
        self._send(answer)
        return True

    async def _attach(self, handed: ServerConnection | None = None, *, slot: bool = False) -> None:
        try:
            await self._attach_steps(handed, slot)
        finally:
            self._attach_task = None
            self._attach_owns = False

    async def _attach_steps(self, handed: ServerConnection | None, slot: bool) -> None:
        """Acquire a server (unless `handed` one or a `slot` for a new one), prepare it and
        link it."""
        route = self.route
        assert route is not None
        for attempt in range(3):  # a server found out of step is dropped; take another
            server = handed
            handed = None
            if server is None and not slot and self.state is _CLOSED:
                return  # it left while we prepared a server that failed: take no other
            try:
                if server is None:
                    if slot:
                        slot = False
                        try:
                            server = await route.connect(
                                self.backend_password(), self.listen, self.steer
                            )
                        except ConnectFailed as exc:
                            if (
                                exc.fields.get("C") != TOO_MANY_CONNECTIONS
                                or not route.rule.pool_timeout
                            ):
                                raise
                            # server_login_retry: acquire tries again until pool_timeout
                            await asyncio.sleep(self.worker.config.server_login_retry / 1000)
                            server = await route.acquire(
                                self.backend_password(), self.listen, self.steer
                            )
                    else:
                        self._waiting()
                        try:
                            server = await route.acquire(
                                self.backend_password(), self.listen, self.steer
                            )
                        finally:
                            self._waited()
            except PoolTimeout:
                self._pool_timeout()
                return
            except ConnectFailed as exc:
                self._connect_failed(exc)
                return
            try:
                await self._sync(server)
                if self.pending_begin:  # virtual_transaction: the BEGIN answered earlier
                    await server.query("BEGIN")
                    self.pending_begin = False
                    self.slow_attach = self.steer is not None
                if server.closed:  # (terminated, RECONNECT...) while it was prepared
                    raise ServerGone("server connection was closed")
                break
            except (BackendError, ServerGone) as exc:
                route.discard(server)
                if attempt == 2 or isinstance(exc, BackendError):
                    sqlstate = exc.sqlstate if isinstance(exc, BackendError) else "08006"
                    self.fatal(sqlstate, f"could not restore session parameters: {exc}")
                    return
            except asyncio.CancelledError:  # the client left while we prepared its server
                route.discard(server)
                raise
        assert server is not None  # the loop ends with a server or returns
        if self.state is _CLOSED:
            route.release(server)
            return
        self._link(server)

    async def _sync(self, server: ServerConnection) -> None:
        """Prepare a server for this client (before linking it): its session parameters,
        and statements dropped after a schema change or past the cache size."""
        if self.params:
            await server.sync_params(self.params)
        if self.statements is not None:
            await server.tidy_statements()

    def _forward(self, server: ServerConnection, data: bytes) -> None:
        """Relay client bytes to the server (what it will owe, prepared statements renamed:
        `ClientRelay.requests`, relay.py) and do what that left to do."""
        try:
            out = self.requests(server, data)
        except ProtocolError as exc:
            self.fatal(exc.sqlstate, f"invalid client message: {exc.message}")
            return
        if out is not None:
            transport = server.transport
            if transport is None or transport.is_closing():
                return  # (gone: its connection_lost comes next)
            transport.write(out)
        route = self.route
        if route is not None:
            route.stats.bytes_received += len(data)
        todo = self.todo
        if todo:
            if todo & ANSWERED:  # a statement pool's refusal, a LISTEN warning
                self._send(self.to_client)
                self.to_client = b""
            if todo & TERMINATE_SEEN:
                self.close()
            elif todo & OWED_NOTHING:
                self._release_if_owed_nothing(server)
        if self.half_closed and (server.pending == 0 or not self.splitter.at_boundary()):
            self.close()  # all answered, or what it sent last can never be

    def _release_if_owed_nothing(self, server: ServerConnection) -> None:
        """A transaction-pool client sent only messages PostgreSQL does not answer (a lone
        Flush, CopyDone outside COPY): nothing will come back to release the server, so
        it goes back now rather than stay pinned to a client that may say nothing more."""
        if (
            self.mode != "session"
            and not self.pinned
            and self.server is server
            and server.status == IDLE
            and not server.copy_in
            and self.splitter.at_boundary()  # a message still arriving keeps its server
        ):
            self.server = None
            if self.state is _LINKED:
                self.become(_IDLE)
            self.worker.give_back(server)

    def server_ready(self, server: ServerConnection) -> None:
        """The server owes nothing more: give it back unless the pool mode keeps it, or
        the client is in the middle of a message streamed to it (its next message, begun
        before the last answer came: the rest must follow to the same server, which goes
        back once the message is whole, `_release_if_owed_nothing`)."""
        if self.server is not server:
            return
        if self.half_closed:
            self.close()  # all answered: the EOF it sent takes effect
            return
        mode = self.mode
        if mode == "session" or self.pinned or self.route is None:
            return
        if mode == "transaction" and server.status != IDLE:
            return
        if self.splitter.remaining:  # (`streaming`, spelled out: this runs per transaction)
            return
        self.server = None
        if self.state is _LINKED:  # (linked -> idle: `become`'s check, inline)
            if log.debug_enabled:
                self.become(_IDLE)
            else:
                self.state = _IDLE
        worker = self.worker
        route = server.route
        if (
            not server.closed
            and not route.reset_query
            and server.status == IDLE
            and not (server.pending > 0 or server.unsynced or server.copy_in or server.desynced)
        ):  # (`Worker.give_back`'s common case and `server.reusable`, inline: once a
            route.release(server)  # transaction; every other case goes through give_back)
        else:
            worker.give_back(server)
        if worker.drain is not None:  # an online restart: its boundary
            worker.transaction_ended(self)

    def server_error(self, server: ServerConnection, body: bytes) -> None:
        """An ErrorResponse went by: count it; after a schema change made a shared
        prepared statement stale (its result type changed, a type it names is gone), every
        server of the route re-prepares."""
        if b"\0VFATAL\0" in body or b"\0VPANIC\0" in body:
            self.told_fatal = True
        route = self.route
        if route is None:
            return
        route.stats.error("server")
        if route.shares_statements and (b"0A000" in body or b"XX000" in body):
            fields = messages.decode_error_fields(body)
            if is_stale_statement_error(fields):
                route.plan_epoch += 1

    def server_lost(self, server: ServerConnection) -> None:
        """The linked server connection died under us."""
        if self.server is server:
            self.server = None
        if self.told_fatal:  # the client has PostgreSQL's reason (terminated, shut down):
            log.info("client", "server closed the connection after its FATAL", self.log_ctx)
            self._to_closed()  # it ends as it would directly, with no second FATAL
            self.transport.close()
            return
        self.fatal("08006", "server connection was closed unexpectedly")

    def _pool_timeout(self) -> None:
        rule = self.rule
        assert rule is not None
        log.error("client", "server pool wait timed out, closing", self.log_ctx)
        self.worker.count_error("pool_timeout")
        self.fatal(
            "53300",
            f"too many active clients for user (pool_size for user "
            f"{self.database}.{self.user} reached "
            f"{self.route.slot_limit if self.route else rule.pool_size})",
        )

    def _connect_failed(self, exc: ConnectFailed) -> None:
        self.worker.count_error("server_connect")
        rule = self.rule
        if rule is not None and rule.client_fwd_error and exc.fields:
            self.fatal(exc.fields.get("C", "08006"), exc.fields.get("M", str(exc)))
        else:
            self.fatal("08006", str(exc))

    def check_cancel_key(self, secret: int) -> bool:
        """Does a CancelRequest's secret (any 32 bits, read signed or not) match ours?"""
        return hmac.compare_digest(
            self.key[1].to_bytes(4, "big"), (secret & 0xFFFFFFFF).to_bytes(4, "big")
        )
