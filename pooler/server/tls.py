"""TLS on both sides: SSL contexts from the listen/storage config, and the client-certificate
check of `authentication "cert"`.

Listen side (odyssey §2.8, `listen { tls ... }`):

* ``disable``: an SSLRequest is answered ``N``;
* ``allow``: TLS accepted, client certificates not asked for;
* ``prefer``, ``require``: TLS accepted; with ``tls_ca_file`` a client certificate is asked for
  and verified when the client presents one (what ``cert`` authentication needs);
  ``require`` refuses a startup without TLS (FATAL 08P01 ``SSL is required``, odyssey's words);
* ``verify_ca``, ``verify_full``: as ``require``, and the client must present a certificate
  signed by ``tls_ca_file``. A client has no host name to check, so ``verify_full`` is
  ``verify_ca`` here (as in odyssey); use ``cert`` authentication to tie the CN to a user.

TLS is for TCP listeners only: on a Unix socket (where libpq never asks for TLS) an SSLRequest
is answered ``N`` and ``require`` is not enforced.

Storage side, libpq's ``sslmode`` semantics (`storage { tls ... }`):

* ``disable``: plaintext;
* ``allow``: plaintext (libpq would retry with TLS after a refusal; we do not);
* ``prefer``: SSLRequest; TLS when the server says ``S``, plaintext when it says ``N``;
* ``require``: TLS or fail; the server certificate is verified only when ``tls_ca_file`` is set
  (as libpq does when a root certificate exists);
* ``verify_ca``: TLS, the certificate must chain to ``tls_ca_file`` (system CAs when unset);
* ``verify_full``: ``verify_ca`` plus the storage host name (or IP) must match the certificate.

``tls_cert_file``/``tls_key_file`` are the pooler's own certificate (listen) or its client
certificate for the server (storage); ``tls_protocols`` is a list such as ``"tlsv1.2,tlsv1.3"``
(also ``all``, ``secure`` = TLS 1.2 and 1.3, ``default``), giving the minimum and maximum
version. Contexts are built at first use and cached per configuration and file modification
times, so replaced certificate files are picked up by new connections.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import Callable
from typing import Any

from pooler.config import Listen, Rule, Storage
from pooler.protocol.build import SSL_REQUEST

LISTEN_TLS_REQUIRED = frozenset(("require", "verify_ca", "verify_full"))
STORAGE_TLS_FIRST = frozenset(("prefer", "require", "verify_ca", "verify_full"))
STORAGE_TLS_REQUIRED = frozenset(("require", "verify_ca", "verify_full"))

_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_GROUPS = {
    "all": ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3"),
    "legacy": ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3"),
    "secure": ("tlsv1.2", "tlsv1.3"),
    "default": ("tlsv1.2", "tlsv1.3"),
}


class TLSConfigError(Exception):
    """The TLS settings cannot be turned into a working SSL context."""


def parse_protocols(text: str | None) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    """``"tlsv1.2,tlsv1.3"`` -> (minimum, maximum); None/empty -> (None, None) = library
    defaults. Names are case-insensitive, separated by commas, colons or spaces; ``tls1.2``
    and ``TLSv1_2`` are accepted spellings."""
    if not text or not text.strip():
        return None, None
    versions: list[ssl.TLSVersion] = []
    for token in re.split(r"[\s,:]+", text.strip().lower()):
        if not token:
            continue
        name = token.replace("_", ".")
        if name.startswith("tls") and not name.startswith("tlsv"):
            name = "tlsv" + name[3:]
        if name in _GROUPS:
            versions.extend(_VERSIONS[n] for n in _GROUPS[name])
        elif name in _VERSIONS:
            versions.append(_VERSIONS[name])
        else:
            raise TLSConfigError(f"unknown TLS protocol '{token}' in tls_protocols '{text}'")
    return min(versions), max(versions)


def _stamp(*paths: str | None) -> tuple[float, ...]:
    stamp = []
    for path in paths:
        try:
            stamp.append(os.stat(path).st_mtime if path else 0.0)
        except OSError:
            stamp.append(-1.0)
    return tuple(stamp)


def _apply_protocols(ctx: ssl.SSLContext, protocols: str | None) -> None:
    low, high = parse_protocols(protocols)
    if low is not None:
        ctx.minimum_version = low
    if high is not None:
        ctx.maximum_version = high


_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}


def _cached(section: Listen | Storage, build: Callable[[Any], ssl.SSLContext]) -> ssl.SSLContext:
    """The context `build` makes for a listen or storage section, cached until its TLS
    settings or the files they name change."""
    files = (section.tls_cert_file, section.tls_key_file, section.tls_ca_file)
    key = (build, section.tls, *files, section.tls_protocols, _stamp(*files))
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = build(section)
        if len(_contexts) > 64:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def listen_context(listen: Listen) -> ssl.SSLContext:
    """The server-side context of a listen block (tls not ``disable``); cached."""
    return _cached(listen, _build_listen_context)


def _build_listen_context(listen: Listen) -> ssl.SSLContext:
    where = f"listen {listen.name}"
    if not listen.tls_cert_file:
        raise TLSConfigError(f"{where}: tls '{listen.tls}' needs tls_cert_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        _apply_protocols(ctx, listen.tls_protocols)
        ctx.load_cert_chain(listen.tls_cert_file, listen.tls_key_file or None)
        if listen.tls_ca_file:
            ctx.load_verify_locations(cafile=listen.tls_ca_file)
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"{where}: {exc}") from None
    if listen.tls in ("verify_ca", "verify_full"):
        if not listen.tls_ca_file:
            raise TLSConfigError(f"{where}: tls '{listen.tls}' needs tls_ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif listen.tls != "allow" and listen.tls_ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def listen_offers_tls(listen: Listen, unix: bool) -> bool:
    """Whether an SSLRequest on this listener is answered ``S``."""
    return listen.tls != "disable" and not unix


def listen_requires_tls(listen: Listen, unix: bool) -> bool:
    """Whether a startup without TLS is refused."""
    return listen.tls in LISTEN_TLS_REQUIRED and not unix


def storage_context(storage: Storage) -> ssl.SSLContext:
    """The client-side context for a storage (tls prefer/require/verify_*); cached."""
    return _cached(storage, _build_storage_context)


def _build_storage_context(storage: Storage) -> ssl.SSLContext:
    where = f"storage '{storage.name}'"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    verify = storage.tls in ("verify_ca", "verify_full") or (
        storage.tls == "require" and bool(storage.tls_ca_file)
    )
    try:
        _apply_protocols(ctx, storage.tls_protocols)
        if verify:
            if storage.tls_ca_file:
                ctx.load_verify_locations(cafile=storage.tls_ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.check_hostname = storage.tls == "verify_full"
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if storage.tls_cert_file:
            ctx.load_cert_chain(storage.tls_cert_file, storage.tls_key_file or None)
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"{where}: {exc}") from None
    return ctx


def storage_wants_tls(storage: Storage, unix_socket: bool) -> bool:
    """Whether a server connection starts with an SSLRequest (never on a Unix socket)."""
    return storage.tls in STORAGE_TLS_FIRST and not unix_socket


def describe_ssl_error(exc: BaseException) -> str:
    """A short reason for a failed handshake ("certificate verify failed: ...")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ConnectionError | EOFError):
        return "connection closed during TLS handshake"
    return str(exc) or type(exc).__name__


# --- `authentication "cert"` -------------------------------------------------------------


def common_names(peercert: dict[str, Any] | None) -> list[str]:
    """The subject CNs of a verified peer certificate (``getpeercert()`` form)."""
    if not peercert:
        return []
    return [
        value for rdn in peercert.get("subject", ()) for name, value in rdn if name == "commonName"
    ]


def allowed_common_names(rule: Rule, user: str) -> list[str]:
    """``auth_common_name`` entries; ``default`` stands for the rule's user name (the client's
    user name for a ``user default`` rule or a group rule)."""
    names = list(rule.auth_common_name)
    if rule.auth_common_name_default:
        names.append(rule.user if rule.user is not None and not rule.group else user)
    return names


def check_client_certificate(transport: Any, rule: Rule, user: str) -> str | None:
    """None when the client may log in by certificate, else why not (-> FATAL 28000)."""
    if transport.get_extra_info("ssl_object") is None:
        return f'certificate authentication failed for user "{user}": connection is not TLS'
    names = common_names(transport.get_extra_info("peercert"))
    if not names:
        return "connection requires a valid client certificate"
    allowed = allowed_common_names(rule, user)
    if not any(name in allowed for name in names):
        return (
            f'certificate authentication failed for user "{user}": '
            f'common name "{names[0]}" is not allowed'
        )
    return None


# --- the handshake -------------------------------------------------------------------------


class TLSHandshakeError(Exception):
    """The TLS handshake failed; the message says why (certificate verify failed: ...)."""


async def upgrade(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    timeout: float | None = None,
) -> asyncio.Transport:
    """``loop.start_tls`` on a connection (the protocol stays, the transport is replaced)."""
    loop = asyncio.get_running_loop()
    try:
        new = await loop.start_tls(
            transport,  # type: ignore[arg-type]
            protocol,
            ctx,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
    except (OSError, TimeoutError, EOFError) as exc:
        raise TLSHandshakeError(describe_ssl_error(exc)) from None
    if new is None:
        raise TLSHandshakeError("connection closed during TLS handshake")
    return new


class _AnswerReader(asyncio.Protocol):
    """Stands in for a server connection's protocol while the answer to its SSLRequest (one
    byte) is read, so the connection's message scanner never sees it."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self.owner = owner
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("server closed the connection"))
        self.owner.connection_lost(exc)


async def negotiate_storage(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    storage: Storage,
    host: str | None,
) -> asyncio.Transport | None:
    """SSLRequest on a fresh server connection, then the handshake when the server says S.

    Returns the TLS transport, or None when the server said N and ``tls`` lets us go on in
    plaintext (``prefer``). Raises TLSConfigError or TLSHandshakeError otherwise.
    """
    ctx = storage_context(storage)
    reader = _AnswerReader(protocol)
    transport.set_protocol(reader)
    try:
        transport.write(SSL_REQUEST)
        try:
            data = await reader.answer
        except ConnectionError as exc:
            raise TLSHandshakeError(str(exc)) from None
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
    if data[:1] == b"S":
        if len(data) > 1:  # libpq's answer to CVE-2021-23222
            raise TLSHandshakeError("received unencrypted data after SSL response")
        return await upgrade(transport, protocol, ctx, server_side=False, server_hostname=host)
    if data[:1] == b"N":
        if storage.tls in STORAGE_TLS_REQUIRED:
            raise TLSHandshakeError("server does not support SSL, but SSL was required")
        return None
    raise TLSHandshakeError(f"received invalid response to SSL negotiation: {data[:1]!r}")
