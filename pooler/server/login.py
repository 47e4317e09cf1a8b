"""A client's login: the startup packet, TLS (GSSAPI encryption refused), routing,
authentication, the server parameters, the reply burst (AuthenticationOk, ParameterStatus,
BackendKeyData, ReadyForQuery), then the client handed over to the relay (client.py).

`Login` lives while its client logs in (and, for the admin console, for the session: the
console reads its requests through it); the client drops it once it relays. The login runs
as a coroutine reading from the login's buffer, started by the client's first bytes and run
at once, in that callback, up to its first wait (`Login._start`): the common login (the
whole startup packet in one read, an authentication that asks the client nothing, a
transaction pool whose server parameters are known) ends there, without a task, a future or
a turn of the event loop. A login that waits for the client's next bytes (the rest of a
packet, a password) goes on in a task of the worker from there; a step that needs a task
(one that talks to a server, the supervisor or an agent, under `asyncio.timeout`) asks for
one first (`await self._in_task()`). It ends with the client in a relaying state, closed, or
in the console.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import struct
import time
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from pooler.config import Config, Rule, Storage
from pooler.logs import log
from pooler.protocol import AuthFailed, ProtocolError, auth, build, messages
from pooler.protocol.framing import (
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupPacket,
    read_startup,
)
from pooler.protocol.messages import PASSWORD_MESSAGE
from pooler.protocol.options import (
    SYNTAX_ERROR as OPTIONS_REFUSED,
    parse_options,
    replication_refusal,
)
from pooler.server import sockopts, tls as tls_support, virtual
from pooler.server.backend import BackendError, ServerConnection, ServerGone, spelled
from pooler.server.client import ClientConnection
from pooler.server.connect import ConnectFailed
from pooler.server.flow import UNREAD_ANSWERS
from pooler.server.groups import GroupChecker
from pooler.server.hba import hba_allows
from pooler.server.lifecycle import ClientState
from pooler.server.pool import PoolTimeout, Route
from pooler.server.prepared import ClientStatements
from pooler.server.router import Router
from pooler.server.watchdog import LagWatchdog, catchup_timeout

# Session parameters re-applied when a client moves to another server connection.
TRACKED_PARAMS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",
)
_NOT_SESSION_PARAMS = frozenset(
    ("user", "database", "replication", "options", "fallback_application_name")
)
MAX_STARTUP_WAIT_BUFFER = 1 << 16
MAX_LOGIN_MESSAGE = 1 << 16
# The startup packets of the last logins, parsed: an application's connections send the same
# bytes each time (pgbench -C, a driver without a pool of its own). Shared: never changed.
# Each with its protocol options (`StartupPacket.protocol_options` builds them on every call).
KNOWN_PACKETS = 256
MAX_KNOWN_PACKET = 1024  # (bytes) longer ones are parsed each time
_known_packets: dict[bytes, tuple[StartupPacket, dict[str, str]]] = {}
_NO_OPTIONS: dict[str, str] = {}  # (a request's: SSLRequest, GSSENCRequest, CancelRequest)

_STARTUP, _LOGIN_WAITING, _CANCEL, _CONSOLE, _IDLE, _WAITING, _LINKED, _CLOSED = ClientState
_LOGIN_STATES = (_STARTUP, _LOGIN_WAITING, _CANCEL)  # (a login timer still runs for them)


_READY = build.ready_for_query("I")
# BackendKeyData in one pack (build.backend_key_data's bytes): type, length, pid, secret
_KEY_DATA = struct.Struct("!BIii")
_KEY_DATA_TYPE = messages.BACKEND_KEY_DATA


@functools.lru_cache(maxsize=256)  # logins of a route report the same parameters
def _parameter_statuses(reported: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(build.parameter_status(name, value) for name, value in reported)


# `_report`'s answers: per route's server parameters (the dict itself, replaced when they
# change, never changed in place) and the client's parameters (all of them: the key is
# built without looking at which the route reports, a third of `_report`'s time)
_reports: dict[tuple[object, ...], tuple[dict[str, str], dict[str, str], bytes]] = {}
MAX_REPORTS = 256


def _report(server_params: dict[str, str], params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """What a transaction-pool login reports: the route's server parameters (a server's
    ParameterStatus at its login), the client's own values where it set them, in
    PostgreSQL's spelling (backend.spelled). Returns what the client's parameters gain (its
    own respelled, the tracked ones it did not set: they are restored on every server it
    gets) and the ParameterStatus messages; kept for the next such login."""
    key = (id(server_params), *params.items())
    known = _reports.get(key)
    if known is not None and known[0] is server_params:
        return known[1], known[2]
    own = tuple((name, params[name]) for name in server_params.keys() & params.keys())
    reported = dict(server_params)
    added = {}
    for name, value in own:
        reported[name] = added[name] = spelled(name, value)
    for name in TRACKED_PARAMS:
        if name in reported and name not in params:
            added[name] = reported[name]
    statuses = _parameter_statuses(tuple(reported.items()))
    if len(_reports) >= MAX_REPORTS:
        del _reports[next(iter(_reports))]  # the oldest
    _reports[key] = (server_params, added, statuses)
    return added, statuses


class ClientGone(Exception):
    """The client closed the connection or broke the protocol during login."""


class LoginRefused(Exception):
    """The client may not log in; the error goes to the client as FATAL."""

    def __init__(
        self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class _InTask:
    """Awaited by a login run by hand before a step that needs a task: it stops there, and
    its task's first step goes on from there (`_Resumed`)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield self


_IN_TASK = _InTask()


class _Resumed(Coroutine[Any, Any, None]):
    """A coroutine run by hand up to its first wait, handed to a task for the rest: the task's
    first step gets what it waits for (a future, or None for a bare yield), as if the task
    had run it from the start, or, where it asked for a task (`_IN_TASK`), runs it on; what
    the task sends or throws later goes straight to it."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], waits_for: Any) -> None:
        self._coro = coro
        self._first: list[Any] | None = [waits_for]

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not None:
            self._first = None
            if first[0] is not _IN_TASK:
                return first[0]
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._first = None  # (cancelled before its first step: the coroutine sees it)
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # (the three-argument form, deprecated)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("a resumed login is stepped by its task, never awaited")


class LoginDeadlines:
    """The client_login_timeout of a worker's logins, on one timer: logins with the same
    timeout end in the order they began, so each timeout keeps its logins in that order (a
    dict: added and removed in O(1)) and the timer waits for the oldest. A timer of its own
    per login (call_later, then cancel) cost about 2 µs of every connection."""

    __slots__ = ("_by_timeout", "_loop", "_timer")

    def __init__(self) -> None:
        self._by_timeout: dict[float, dict[Login, float]] = {}  # logins and their deadlines
        self._timer: asyncio.TimerHandle | None = None
        # the worker's loop, found at the first login: on CPython 3.11 each
        # asyncio.get_running_loop() makes a getpid() system call (its fork check)
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, login: Login, timeout: float) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        logins = self._by_timeout.get(timeout)
        if logins is None:
            logins = self._by_timeout[timeout] = {}
        logins[login] = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:  # (another timeout's run out sooner)
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)

    def remove(self, login: Login, timeout: float) -> None:
        self._by_timeout[timeout].pop(login, None)

    def _expire(self) -> None:
        """Time out the logins past their deadline; wait for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired: list[Login] = []
        next_at = float("inf")
        for logins in self._by_timeout.values():
            for login, deadline in logins.items():
                if deadline > now:
                    next_at = min(next_at, deadline)
                    break
                expired.append(login)
        for login in expired:
            self._by_timeout[login.timeout].pop(login, None)
            login.timeout = 0  # (run out: nothing to remove when it ends)
            login.timed_out()
        if next_at != float("inf") and self._timer is None:
            self._timer = loop.call_at(next_at, self._expire)


class LoginWorker(Protocol):
    """What a login uses of its worker (`worker.Worker`)."""

    config: Config
    router: Router
    groups: GroupChecker
    routing_gate: asyncio.Semaphore | None
    login_deadlines: LoginDeadlines
    watchdog: LagWatchdog
    soft_oom_usage: int | None  # soft_oom: bytes in use while over its limit

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def register_cancel_key(
        self, client: ClientConnection, server_pid: int = 0
    ) -> tuple[int, int]: ...
    def count_error(self, kind: str) -> None: ...
    async def client_slot(self, key: tuple[Any, ...], limit: int) -> bool: ...
    async def cancel(self, pid: int, secret: int) -> None: ...
    async def console_login(self, login: Login, rule: Rule) -> None: ...
    async def auth_query_password(self, rule: Rule, user: str) -> str | None: ...
    def storage_of(self, rule: Rule) -> Storage: ...
    def route_for(
        self, rule: Rule, database: str, user: str, backend_user: str | None = None
    ) -> Route: ...


class Login:
    """One client's login (see the module's docstring)."""

    __slots__ = (
        "_routing",
        "_waiter",
        "buf",
        "client",
        "handshaking",
        "started",
        "task",
        "timeout",
        "worker",
    )

    def __init__(self, worker: LoginWorker, client: ClientConnection) -> None:
        self.worker = worker
        self.client = client
        self.buf = bytearray()  # what the client sent, not read yet
        self._waiter: asyncio.Future[None] | None = None
        self.handshaking = False  # in the TLS handshake (the handshake has the socket)
        self._routing = False  # holds one of the worker's client_max_routing places
        self.started = False  # the client sent its first bytes: the login runs
        self.task: asyncio.Task[None] | None = None  # the rest of a login that waited
        self.timeout = client.listen.client_login_timeout / 1000  # (s) 0: none, or it ran out
        if self.timeout:
            worker.login_deadlines.add(self, self.timeout)

    def received(self, data: bytes) -> None:
        """Bytes from the client while it logs in (or talks to the console)."""
        self.buf += data
        if len(self.buf) > MAX_LOGIN_MESSAGE + MAX_STARTUP_WAIT_BUFFER:
            self.client.fatal("08P01", "login message too large")
            return
        if self.started:
            self.wake()
        else:
            self._start()

    def _start(self) -> None:
        """Run the login now, up to its first wait (Python 3.12's eager tasks do the same,
        with a task made anyway); the rest, if any, in a task."""
        self.started = True
        login = self.run()
        try:
            waits_for = login.send(None)
        except StopIteration:
            return  # over: handed over, refused or closed
        self.task = self.worker.spawn(_Resumed(login, waits_for), f"login {self.client.id}")

    def lost(self) -> None:
        """The client's connection is gone."""
        self.wake()
        self.stop_timer()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.buf = bytearray()  # what it held goes back now

    def timed_out(self) -> None:
        if self.handshaking and self.task is not None:
            self.task.cancel()  # a stalled handshake (its own timeout is 60 s)
        elif self.client.state in _LOGIN_STATES:
            self.client.fatal("08006", "client login timed out")

    def stop_timer(self) -> None:
        if self.timeout:
            self.worker.login_deadlines.remove(self, self.timeout)
            self.timeout = 0

    async def _in_task(self) -> None:
        """Before a step that needs a task (asyncio.timeout, tasks of its own): a login run
        by hand goes on in one from here."""
        if self.task is None:
            await _IN_TASK

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        client = self.client
        if client.state is _CLOSED or client.half_closed:  # (half-closed: no more bytes come)
            raise ClientGone
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if client.state is _CLOSED or client.half_closed:
            raise ClientGone

    async def drained(self) -> None:
        """Wait while the client's transport is full (it does not read what we write): a
        session answering from the pooler itself (the console) stops reading its requests
        meanwhile, as the relay does."""
        client = self.client
        if not client.writing_paused:
            return
        client.reading.pause(UNREAD_ANSWERS)
        try:
            while client.writing_paused:
                await self._more()
        finally:
            client.reading.resume(UNREAD_ANSWERS)

    async def _read_startup(self) -> tuple[object, dict[str, str]]:
        """The startup-phase message at the start of `buf`, taken off it, and its protocol
        options (a StartupPacket's)."""
        buf = self.buf
        while True:
            if len(buf) >= 8:  # a packet parsed before (`_known_packets`)?
                length = int.from_bytes(buf[:4])
                if length <= len(buf) and length <= MAX_KNOWN_PACKET:
                    known = _known_packets.get(bytes(buf[:length]))
                    if known is not None:
                        del buf[:length]
                        return known
            parsed = read_startup(buf)
            if parsed is not None:
                message, used = parsed
                if not isinstance(message, StartupPacket):
                    del buf[:used]
                    return message, _NO_OPTIONS
                known = message, message.protocol_options
                if used <= MAX_KNOWN_PACKET:
                    if len(_known_packets) >= KNOWN_PACKETS:
                        del _known_packets[next(iter(_known_packets))]  # the oldest
                    _known_packets[bytes(buf[:used])] = known
                del buf[:used]
                return known
            await self._more()

    async def read_message(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 5:
                length = int.from_bytes(self.buf[1:5], "big")
                if length < 4 or length > MAX_LOGIN_MESSAGE:
                    raise ProtocolError(f"invalid message length {length}", "08P01")
                if len(self.buf) >= length + 1:
                    msg_type = self.buf[0]
                    body = bytes(self.buf[5 : length + 1])
                    del self.buf[: length + 1]
                    return msg_type, body
            await self._more()

    async def _read_password(self) -> bytes:
        msg_type, body = await self.read_message()
        if msg_type != PASSWORD_MESSAGE:
            raise ProtocolError(
                f"expected password response, got message type {chr(msg_type)!r}", "08P01"
            )
        return body

    async def _read_password_string(self) -> bytes:
        """A PasswordMessage of one C string (a cleartext password, an md5 answer), read as
        PostgreSQL reads it: a NUL inside, or none at the end, is a protocol violation."""
        body = await self._read_password()
        if not body.endswith(b"\0") or body.index(b"\0") != len(body) - 1:
            raise ProtocolError("invalid password packet size", "08P01")
        return body[:-1]

    async def run(self) -> None:
        client = self.client
        try:
            await self._steps()
        except ClientGone:
            client.close()
        except ProtocolError as exc:
            client.fatal(exc.sqlstate, str(exc))
        except LoginRefused as exc:
            client.fatal(exc.sqlstate, str(exc), detail=exc.detail, hint=exc.hint)
        except PoolTimeout:
            client._pool_timeout()
        except ConnectFailed as exc:
            client._connect_failed(exc)
        except (ServerGone, BackendError) as exc:
            client.fatal("08006", f"server login failed: {exc}")
        except Exception as exc:  # a fault of ours: the client is closed, not left hanging
            log.error("client", f"login failed: {exc!r}", client.log_ctx)
            client.close()
        finally:
            if self._routing:
                self._leave_routing()

    async def _enter_routing(self) -> None:
        """client_max_routing: logins between their startup packet and the end of routing
        (authentication included) at once; more wait their turn (odyssey stops accepting
        meanwhile). A client that has not sent its whole startup packet holds no place."""
        gate = self.worker.routing_gate
        if gate is None:
            return
        if gate.locked():
            log.info(
                "client_max_routing", "client is waiting in routing queue", self.client.log_ctx
            )
        await gate.acquire()
        self._routing = True

    def _leave_routing(self) -> None:
        if self._routing and self.worker.routing_gate is not None:
            self._routing = False
            self.worker.routing_gate.release()

    async def _steps(self) -> None:
        client = self.client
        tls = ssl_asked = gss_asked = False
        while True:
            message, protocol_options = await self._read_startup()
            if type(message) is StartupPacket:
                break
            # As PostgreSQL: each request once, neither after TLS is up (the second is read
            # as a startup packet of protocol 1234.5679/5680 and refused); what came with
            # the request, before our answer, was not encrypted (CVE-2021-23214).
            if isinstance(message, SSLRequest) and not ssl_asked:
                ssl_asked = True
                if not tls_support.listen_offers_tls(client.listen, client.unix):
                    self._refuse_encryption("SSL request")
                else:
                    await self._in_task()
                    tls = await self._start_tls()
                    gss_asked = gss_asked or tls
                continue
            if isinstance(message, GSSENCRequest) and not gss_asked:
                gss_asked = True
                self._refuse_encryption("GSSAPI encryption request")
                continue
            if isinstance(message, SSLRequest | GSSENCRequest):
                code = SSL_REQUEST_CODE if isinstance(message, SSLRequest) else GSSENC_REQUEST_CODE
                raise ProtocolError(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "server supports 3.0 to 3.0",
                    "0A000",
                )
            if isinstance(message, CancelRequest):
                client.become(_CANCEL)
                # its own task: a sender that hangs up at once (waiting for a place under
                # cancel_max_inflight) must not take its cancel with it
                await self._in_task()
                cancel = self.worker.cancel(message.pid, message.secret)
                await asyncio.shield(self.worker.spawn(cancel, "cancel request"))
                client.close()
                return
            raise AssertionError(f"read_startup gave {message!r}")
        assert isinstance(message, StartupPacket)
        worker = self.worker
        config = worker.config
        if worker.routing_gate is not None:
            await self._enter_routing()
        if not tls and tls_support.listen_requires_tls(client.listen, client.unix):
            raise LoginRefused("08P01", "SSL is required")  # odyssey's words
        if message.minor_version > 0 or protocol_options:
            # As PostgreSQL does: we speak 3.0 and know no _pq_ options.
            client._send(build.negotiate_protocol_version(0x30000, sorted(protocol_options)))
        limit = config.client_max
        if limit is not None:
            await self._take_client_slot(
                ("clients",), limit, f"too many tcp connections (global client_max {limit})"
            )
        params = dict(message.params)  # (the packet's own are shared: `_known_packets`)
        for name in protocol_options:
            del params[name]
        requested_catchup = params.pop("odyssey_catchup_timeout", None)  # odyssey's own
        client.user = params.get("user", "")
        if not client.user:
            raise LoginRefused("28000", "no PostgreSQL user name specified in startup packet")
        if "replication" in params:
            refusal = replication_refusal(params["replication"])
            if refusal is not None:
                raise LoginRefused(*refusal)
        client.database = params.get("database") or client.user
        client.log_ctx.user, client.log_ctx.database = client.user, client.database
        if config.log_session:
            where = f"{client.peer[0]}:{client.peer[1]}" if client.peer else "unix socket"
            log.info("startup", f"new client connection {where}", client.log_ctx)
        address = client.peer[0] if client.peer else None
        if config.hba_file and not hba_allows(
            config.hba_rules, database=client.database, user=client.user, address=address, tls=tls
        ):
            raise LoginRefused("28000", "host based authentication rejected")
        if not worker.groups.ready:  # (group rules: members known since start)
            await self._in_task()
            await worker.groups.first_check()
        rule = worker.router.match_client(client.database, client.user, address, tls)
        if rule is None:
            worker.count_error("route_not_found")
            raise LoginRefused("3D000", f"route for '{client.database}.{client.user}' is not found")
        client.rule = rule
        client.mode = rule.pool
        if client.listen.target_session_attrs:  # (else its rule's: nothing to steer by)
            client.steer = client._steering()
            client.slow_attach = client.steer is not None
        if rule.keepalive > 0 and not client.unix:  # the route's own keepalive (odyssey master)
            sockopts.apply(client.transport, sockopts.TcpOptions.of(config, rule))
        if config.log_session:
            log.info(
                "startup",
                f"route '{client.database}.{client.user}' to '{rule.name}'",
                client.log_ctx,
            )
        if rule.authentication != "none":
            await self._authenticate(rule)
        if self._routing:
            self._leave_routing()
        storage = worker.storage_of(rule)
        if storage.type == "local":
            await self._in_task()
            await worker.console_login(self, rule)
            return
        if worker.soft_oom_usage is not None:  # over soft_oom's limit (odyssey)
            usage = worker.soft_oom_usage // 1024
            log.error(
                "startup", f"drop connection due to soft oom (usage is {usage} KB)", client.log_ctx
            )
            raise LoginRefused("53200", "soft out of memory")
        limit = catchup_timeout(client.listen, rule, requested_catchup)
        if limit:
            await self._in_task()
            await self._check_catchup(limit)
        ldap_user = client.ldap_login.storage_user if client.ldap_login else None
        route = worker.route_for(rule, client.database, client.user, ldap_user)
        if rule.client_max is not None:
            await self._take_client_slot(
                ("clients", *route.key),
                rule.client_max,
                f"too many client tcp connections (client_max for user "
                f"{client.database}.{client.user} {rule.client_max})",
            )
        route.clients += 1
        client.route = route
        if route.shares_statements:
            client.statements = ClientStatements(route.stats, route.known_statements)
        from_options = self._init_params(params, rule)
        if config.query_parsing.mode != "disabled":
            client.intercepts = (
                config.virtual_processing
                or rule.application_name_add_host
                or (client.mode == "transaction" and virtual.transaction_on(config))
            )
        notices: list[bytes] = []  # what a server said at its login, passed on (as odyssey)
        if client.mode == "session":
            server = await self._acquire_for_login(route)
            await self.sync_for_login(route, server)
            server.link(client, time.monotonic())
            client.server = server
            notices, server.login_notices = server.login_notices, []
            statuses = _parameter_statuses(tuple(server.params.items()))
            for name in TRACKED_PARAMS:
                if name in server.params:
                    client.params.setdefault(name, server.params[name])
        else:
            if route.server_params is None or from_options:
                # (settings from `options` are tried now: one PostgreSQL refuses must
                # refuse the login, not the client's first query)
                server = await self._acquire_for_login(route)
                notices, server.login_notices = server.login_notices, []
                if from_options:
                    await self.sync_for_login(route, server)
                route.release(server)
            added, statuses = _report(route.server_params or {}, client.params)
            client.params.update(added)
        self._finish(statuses, notices)

    async def sync_for_login(self, route: Route, server: ServerConnection) -> None:
        """Prepare a server for this client during login; a session parameter PostgreSQL
        refuses refuses the login, as it would directly."""
        try:
            await self.client._sync(server)
        except BackendError as exc:
            route.release(server)  # a refused SET leaves the server as it was
            raise LoginRefused(exc.sqlstate, str(exc)) from None
        except BaseException:
            route.discard(server)
            raise
        if server.closed:  # (terminated, RECONNECT...) after it was handed over
            route.discard(server)
            raise ServerGone("server connection was closed during the login")

    async def _check_catchup(self, limit: int) -> None:
        """Refuse the client while the storage watchdog says the replica lags `limit`
        seconds or more (odyssey's words and codes)."""
        client = self.client
        lag = await self.worker.watchdog.current_lag(limit)
        if lag is not None and lag < limit:
            return
        self.worker.count_error("catchup_timeout")
        shown = "unknown" if lag is None else str(lag)
        log.info(
            "catchup",
            f"replication lag is too big ({shown} sec), failed to wait replica for catchup",
            client.log_ctx,
        )
        raise LoginRefused(
            "08006",
            "replication lag of the node you are trying to connect is too big, connection rejected",
            detail=f"replication lag too big ({shown} seconds), connection rejected: "
            f"{client.database} {client.user}",
            hint="wait until the replica catches up with the primary",
        )

    async def _acquire_for_login(self, route: Route) -> ServerConnection:
        """A server during login (session pool, or a route's first login, which learns the
        server's parameters); meanwhile the client counts as waiting, as in pgbouncer."""
        await self._in_task()
        client = self.client
        client.become(_LOGIN_WAITING)
        client.asked_at = time.monotonic()
        try:
            server = await route.acquire(client.backend_password(), client.listen, client.steer)
        finally:
            if client.state is _LOGIN_WAITING:
                client.become(_STARTUP)
        if client.state is _CLOSED:  # it left meanwhile: the server goes back unused
            route.release(server)
            raise ClientGone
        return server

    def _refuse_encryption(self, request: str) -> None:
        """Answer N to an SSLRequest or a GSSENCRequest."""
        if self.buf:
            raise ProtocolError(f"received unencrypted data after {request}", "08P01")
        self.client._send(b"N")

    async def _start_tls(self) -> bool:
        """Answer an SSLRequest with S and run the handshake (contexts: server/tls.py)."""
        client = self.client
        if self.buf:  # PostgreSQL's answer to CVE-2021-23214
            raise ProtocolError("received unencrypted data after SSL request", "08P01")
        try:
            ctx = tls_support.listen_context(client.listen)
        except tls_support.TLSConfigError as exc:
            log.error("tls", f"cannot offer TLS: {exc}", client.log_ctx)
            client._send(b"N")
            return False
        client._send(b"S")
        self.handshaking = True
        try:
            client.transport = await tls_support.upgrade(
                client.transport, client, ctx, server_side=True
            )
            client.reading.transport = client.transport
        except (tls_support.TLSHandshakeError, asyncio.CancelledError) as exc:
            if isinstance(exc, tls_support.TLSHandshakeError):
                log.error("tls", f"TLS handshake failed: {exc}", client.log_ctx)
            # the socket was the handshake's: our connection_lost would never come, and the
            # client would count among the worker's for good (a drain waited for it)
            client.transport.close()
            client.connection_lost(None)
            raise ClientGone from None
        finally:
            self.handshaking = False
        return True

    async def _take_client_slot(self, key: tuple[object, ...], limit: int, refusal: str) -> None:
        await self._in_task()
        if not await self.worker.client_slot(key, limit):
            self.worker.count_error("client_max")
            raise LoginRefused("53300", refusal)
        self.client.client_slots.append(key)

    def _init_params(self, startup: dict[str, str], rule: Rule) -> dict[str, str]:
        """The client's session parameters: its startup parameters, what its `options`
        set (honoured even without maintain_params: they are explicit), the rule's
        `options`. Returns what `options` set (LoginRefused if it cannot be honoured)."""
        client = self.client
        try:
            from_options = parse_options(startup["options"]) if "options" in startup else {}
        except ValueError as exc:
            raise LoginRefused(OPTIONS_REFUSED, str(exc)) from None
        if not rule.maintain_params:
            client.params = dict(from_options)
        else:
            wanted = {k: v for k, v in startup.items() if k not in _NOT_SESSION_PARAMS}
            if "application_name" not in wanted and "fallback_application_name" in startup:
                wanted["application_name"] = startup["fallback_application_name"]
            wanted.update(from_options)
            for name, value in rule.options:
                wanted[name] = value
            client.params = wanted
        if rule.application_name_add_host:
            app = client.params.get("application_name") or startup.get("application_name")
            client.params["application_name"] = f"{app or 'unknown'} - {client.peer_name()}"
        return from_options

    def _finish(self, statuses: bytes, notices: list[bytes]) -> None:
        """The reply burst (AuthenticationOk, what the server said at its login, the
        ParameterStatus messages, BackendKeyData, ReadyForQuery), then the client is handed
        over to the relay."""
        client = self.client
        server = client.server  # (a session pool's, linked for the client's life)
        key = client.key = self.worker.register_cancel_key(
            client, server.backend_key[0] if server else 0
        )
        if self.timeout:  # (`stop_timer`, inline)
            self.worker.login_deadlines.remove(self, self.timeout)
            self.timeout = 0
        client._send(
            b"".join(
                (
                    build.AUTH_OK,
                    *notices,
                    statuses,
                    _KEY_DATA.pack(_KEY_DATA_TYPE, 12, *key),
                    _READY,
                )
            )
        )
        state = client.state
        if state is _CLOSED:
            return  # it left as the login ended
        if state is _STARTUP and not log.debug_enabled:  # (startup -> idle or linked, inline)
            client.state = _LINKED if server is not None else _IDLE
        else:
            client.become(_LINKED if server is not None else _IDLE)
        client.ready_at = time.monotonic()
        client.login = None  # handed over to the relay
        if self.buf:  # the client pipelined past the login
            data, self.buf = bytes(self.buf), bytearray()
            client.data_received(data)
        if client.half_closed:
            client._done_after_eof()

    async def _authenticate(self, rule: Rule) -> None:
        client = self.client
        method = rule.authentication
        if method == "none":
            return
        if method == "block":
            raise LoginRefused("28000", f"user blocked: {client.database} {client.user}")
        if method == "cert":
            refusal = tls_support.check_client_certificate(client.transport, rule, client.user)
            if refusal is not None:
                raise LoginRefused("28000", refusal)
            return
        configured = rule.password
        if rule.auth_query:
            await self._in_task()
            configured = client.looked_up = await self.worker.auth_query_password(rule, client.user)
        if method == "clear_text":
            client._send(build.auth_cleartext_password())
            given = (await self._read_password_string()).decode("utf-8", "replace")
            if rule.ldap_endpoint_name:
                ok = await self._ldap(rule, given)
            elif rule.auth_pam_service:
                ok = await self._pam(rule.auth_pam_service, given)
            else:
                ok = configured is not None and auth.verify_cleartext(
                    given, configured, client.user
                )
            if ok:
                client.password = given
        elif method == "md5":
            salt = secrets.token_bytes(4)
            client._send(build.auth_md5_password(salt))
            response = (await self._read_password_string()).decode("ascii", "replace")
            ok = configured is not None and auth.verify_md5(response, client.user, configured, salt)
        elif method == "scram-sha-256":
            ok = await self._scram(configured)  # None: a mock exchange (no user enumeration)
        elif method == "external":
            client._send(build.auth_cleartext_password())
            given = (await self._read_password_string()).decode("utf-8", "replace")
            ok = await self._external(given)
        else:
            raise LoginRefused("28000", f"authentication method '{method}' is not supported yet")
        if not ok:
            raise LoginRefused("28P01", f'password authentication failed for user "{client.user}"')

    async def _external(self, token: str) -> bool:
        """Ask the external auth agent (pooler/server/external_auth.py)."""
        await self._in_task()
        client = self.client
        from pooler.server import external_auth

        try:
            external_id = await external_auth.authenticate(
                self.worker.config.external_auth_socket_path, client.user, token
            )
        except external_auth.ExternalRefused as exc:
            log.error("auth", f"external authentication failed: {exc}", client.log_ctx)
            return False
        if self.worker.config.log_session:
            log.info(
                "auth",
                f"user '{client.database}.{client.user}' was authenticated with external_id: "
                f"{external_id}",
                client.log_ctx,
            )
        return True

    async def _pam(self, service: str, password: str) -> bool:
        """Check the password with PAM (pooler/server/pam_auth.py)."""
        await self._in_task()
        from pooler.server import pam_auth

        try:
            await pam_auth.authenticate(service, self.client.user, password)
        except pam_auth.PamRefused as exc:
            log.error("auth_pam", f"pam authentication failed: {exc}", self.client.log_ctx)
            return False
        return True

    async def _ldap(self, rule: Rule, password: str) -> bool:
        """Check the password against the rule's ldap_endpoint (pooler/server/ldap_auth.py);
        keep the server login LDAP chose (ldap_storage_credentials)."""
        await self._in_task()
        client = self.client
        from pooler.server import ldap_auth  # ldap3 loads only where LDAP is used

        endpoint = self.worker.config.ldap_endpoint(rule.ldap_endpoint_name or "")
        if endpoint is None:  # validated; a reload may have removed it meanwhile
            return False
        storage = self.worker.storage_of(rule)
        try:
            client.ldap_login = await ldap_auth.authenticate(
                endpoint, rule, storage, client.database, client.user, password
            )
        except ldap_auth.LdapRefused as exc:
            log.error("auth_ldap", f"ldap authentication failed: {exc}", client.log_ctx)
            return False
        return True

    async def _scram(self, configured: str | None) -> bool:
        client = self.client
        try:
            server = auth.ScramServer(configured, user=client.user)
        except ValueError:  # an md5 hash cannot answer SCRAM
            return False
        client._send(build.auth_sasl(server.mechanisms))
        mechanism, first = messages.decode_sasl_initial_response(await self._read_password())
        client._send(build.auth_sasl_continue(server.handle_client_first(first, mechanism)))
        final = messages.decode_sasl_response(await self._read_password())
        try:
            client._send(build.auth_sasl_final(server.handle_client_final(final)))
        except AuthFailed:
            return False
        client.scram_keys = server.recovered_keys  # lets us log in to the server as the client
        return True
