"""Password checks and SASL/md5 answers for both sides of the pooler.

*Client side of the pooler* (the pooler authenticates its clients):
:func:`verify_cleartext`, :func:`verify_md5` and :class:`ScramServer`.
*Backend side* (the pooler logs in to PostgreSQL): :func:`md5_response` and
:class:`ScramClient`.

A configured password may be plain text, an md5 hash as PostgreSQL stores it
(``md5`` + 32 hex digits) or a SCRAM secret as PostgreSQL stores it
(``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``); see
:func:`password_kind`.

SCRAM-SHA-256 (RFC 5802/7677, no channel binding) is implemented here on ``hashlib`` and
``hmac`` rather than on ``scramp``'s state machines, because those reject what
PostgreSQL's own peers do: libpq sends an empty user name (``n=,r=...``), PostgreSQL
>= 16 may use fewer than 4096 iterations (``scram_iterations``), and passwords with
ASCII control characters are used unnormalized by PostgreSQL while scramp refuses them.
``scramp``'s SASLprep is used for non-ASCII passwords, with PostgreSQL's fallback to the
raw bytes when SASLprep fails; the tests check interoperability with scramp's client
and server.

PBKDF2 with 4096 iterations costs milliseconds, so derivations from *configured*
passwords are cached (:func:`_salted_password`, :func:`_plain_secret`); passwords typed
by clients are never cached. No password, hash or key appears in an exception message
or a ``repr``.

A little over 500 lines for a reason: both sides of each exchange live here (ScramServer for
clients and ScramClient towards PostgreSQL, md5 and cleartext checks and answers) because
they share one reader of the configured secret formats and its caches, and the tests run
each side against the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from base64 import b64decode, b64encode
from binascii import Error as BinasciiError
from dataclasses import dataclass, field
from functools import lru_cache

from scramp.utils import ScramException, saslprep

from pooler.protocol.errors import FEATURE_NOT_SUPPORTED, AuthFailed, ProtocolError

__all__ = [
    "SCRAM_SHA_256",
    "ScramClient",
    "ScramKeys",
    "ScramSecret",
    "ScramServer",
    "make_scram_secret",
    "md5_password_hash",
    "md5_response",
    "parse_scram_secret",
    "password_kind",
    "verify_cleartext",
    "verify_md5",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
NONCE_BYTES = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN
MAX_ITERATIONS = 10_000_000  # refuse to burn CPU for a hostile server
_HEX = frozenset("0123456789abcdef")


# --------------------------------------------------------------------------- md5


def is_md5_hash(s: str) -> bool:
    """True if ``s`` looks like PostgreSQL's stored md5 hash (``md5`` + 32 lower hex)."""
    return len(s) == 35 and s.startswith("md5") and _HEX.issuperset(s[3:])


def password_kind(s: str) -> str:
    """``"md5"``, ``"scram"`` or ``"plain"`` for a configured password."""
    if is_md5_hash(s):
        return "md5"
    if parse_scram_secret(s) is not None:
        return "scram"
    return "plain"


def md5_password_hash(user: str, password: str) -> str:
    """``"md5" + md5(password + user)``: what PostgreSQL stores in pg_authid."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(user: str, password_or_md5: str, salt: bytes) -> str:
    """The PasswordMessage answering AuthenticationMD5Password(salt).

    ``password_or_md5`` may be the plain password or its stored ``md5...`` hash.
    """
    inner = (
        password_or_md5
        if is_md5_hash(password_or_md5)
        else md5_password_hash(user, password_or_md5)
    )
    return "md5" + hashlib.md5(inner[3:].encode() + bytes(salt)).hexdigest()


def verify_md5(response: str, user: str, password_or_md5: str, salt: bytes) -> bool:
    """Check a client's md5 response. A SCRAM secret cannot verify md5 (returns False)."""
    if parse_scram_secret(password_or_md5) is not None:
        return False
    expected = md5_response(user, password_or_md5, salt)
    return hmac.compare_digest(response.encode(), expected.encode())


def verify_cleartext(given: str, configured: str, user: str) -> bool:
    """Check a cleartext password against a plain, md5 or SCRAM configured password."""
    if is_md5_hash(configured):
        return hmac.compare_digest(md5_password_hash(user, given).encode(), configured.encode())
    secret = parse_scram_secret(configured)
    if secret is not None:
        salted = _hi(_normalize(given), secret.salt, secret.iterations)
        _, stored_key, _ = _keys(salted)
        return hmac.compare_digest(stored_key, secret.stored_key)
    return hmac.compare_digest(given.encode(), configured.encode())


# --------------------------------------------------------------------------- SCRAM primitives


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """A parsed SCRAM-SHA-256 secret; ``str()`` gives PostgreSQL's text form."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __str__(self) -> str:
        return (
            f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """Keys recovered from a client's SCRAM proof, enough to log in to a server that
    stores the same secret (SCRAM pass-through). See :attr:`ScramServer.recovered_keys`."""

    client_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    salt: bytes
    iterations: int


def parse_scram_secret(s: str) -> ScramSecret | None:
    """Parse ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``; None if not one."""
    if not s.startswith(SCRAM_SHA_256 + "$"):
        return None
    try:
        _, iter_salt, keys = s.split("$")
        iter_s, salt_s = iter_salt.split(":")
        stored_s, server_s = keys.split(":")
        iterations = int(iter_s)
        salt = b64decode(salt_s, validate=True)
        stored = b64decode(stored_s, validate=True)
        server = b64decode(server_s, validate=True)
    except (ValueError, BinasciiError):
        return None
    if iterations < 1 or not salt or len(stored) != 32 or len(server) != 32:
        return None
    return ScramSecret(iterations, salt, stored, server)


def make_scram_secret(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """A SCRAM-SHA-256 secret built like PostgreSQL's ``scram_build_secret``."""
    salt = secrets.token_bytes(SALT_LENGTH) if salt is None else salt
    _, stored_key, server_key = _keys(_hi(_normalize(password), salt, iterations))
    return str(ScramSecret(iterations, salt, stored_key, server_key))


def _normalize(password: str) -> bytes:
    """SASLprep as PostgreSQL applies it: ASCII as is; on failure the raw bytes."""
    if password.isascii():
        return password.encode()
    try:
        prepared: str = saslprep(password)
        return prepared.encode()
    except ScramException:
        return password.encode()


def _hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


@lru_cache(maxsize=256)
def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Cached Hi() for configured passwords (backend logins reuse the role's salt)."""
    return _hi(_normalize(password), salt, iterations)


@lru_cache(maxsize=1024)
def _plain_secret(password: str, iterations: int) -> ScramSecret:
    """A per-process SCRAM secret for a plain configured password (random salt)."""
    salt = secrets.token_bytes(SALT_LENGTH)
    _, stored_key, server_key = _keys(_hi(_normalize(password), salt, iterations))
    return ScramSecret(iterations, salt, stored_key, server_key)


def _keys(salted: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) from SaltedPassword."""
    client_key = _hmac(salted, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(b: bytes) -> str:
    return b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    try:
        return b64decode(s, validate=True)
    except (ValueError, BinasciiError):
        raise ProtocolError("malformed SCRAM message: invalid base64") from None


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(f"malformed SCRAM message: {detail}")


def _text(data: bytes) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("invalid UTF-8") from None


def _printable(s: str) -> bool:
    return bool(s) and all("!" <= c <= "~" and c != "," for c in s)


# --------------------------------------------------------------------------- server side

_MOCK_NONCE = secrets.token_bytes(32)


class ScramServer:
    """SCRAM-SHA-256 exchange with a client, as PostgreSQL runs it.

    ``password_or_secret`` is a plain password or a SCRAM secret (an md5 hash cannot do
    SCRAM: ``ValueError``). ``None`` runs a *mock* exchange that looks normal but always
    fails, so unknown users are indistinguishable (pass ``user`` for a stable salt)::

        server = ScramServer(configured)
        send(build.auth_sasl(server.mechanisms))
        mech, data = messages.decode_sasl_initial_response(body)
        send(build.auth_sasl_continue(server.handle_client_first(data, mech)))
        data = messages.decode_sasl_response(body)
        send(build.auth_sasl_final(server.handle_client_final(data)))  # or AuthFailed
        send(build.auth_ok())

    Malformed client messages raise :class:`ProtocolError`, a wrong password
    :class:`AuthFailed`.
    """

    mechanisms: tuple[str, ...] = (SCRAM_SHA_256,)

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_gs2_header",
        "_mock",
        "_nonce",
        "_secret",
        "_server_first",
        "_stage",
        "recovered_keys",
    )

    def __init__(
        self,
        password_or_secret: str | None,
        *,
        user: str = "",
        iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        self._mock = password_or_secret is None
        if password_or_secret is None:
            salt = hashlib.sha256(_MOCK_NONCE + user.encode()).digest()[:SALT_LENGTH]
            self._secret = ScramSecret(
                iterations, salt, secrets.token_bytes(32), secrets.token_bytes(32)
            )
        elif is_md5_hash(password_or_secret):
            raise ValueError("an md5-hashed password cannot be used for SCRAM authentication")
        else:
            self._secret = parse_scram_secret(password_or_secret) or _plain_secret(
                password_or_secret, iterations
            )
        self._stage = 0
        self._nonce = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._auth_message = b""
        #: after a successful exchange, keys for SCRAM pass-through to a backend
        self.recovered_keys: ScramKeys | None = None

    def __repr__(self) -> str:
        return f"<ScramServer stage={self._stage} mock={self._mock}>"

    def handle_client_first(self, data: bytes, mechanism: str = SCRAM_SHA_256) -> bytes:
        """Take SASLInitialResponse data (client-first-message); return server-first."""
        if self._stage != 0:
            raise ProtocolError("unexpected SCRAM client-first message")
        if mechanism != SCRAM_SHA_256:
            raise ProtocolError("client selected an invalid SASL authentication mechanism")
        text = _text(data)
        if text[:1] == "p":
            raise _malformed(
                "the client selected SCRAM-SHA-256 without channel binding, "
                "but the message includes channel binding data"
            )
        if text[:2] not in ("n,", "y,"):
            raise _malformed("unexpected channel-binding flag")
        if text[2:4] == "a=":
            raise ProtocolError(
                "client uses authorization identity, but it is not supported",
                FEATURE_NOT_SUPPORTED,
            )
        if text[2:3] != ",":
            raise _malformed("comma expected")
        self._gs2_header = text[:3]
        bare = text[3:]
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise ProtocolError(
                "client requires an unsupported SCRAM extension", FEATURE_NOT_SUPPORTED
            )
        if not attrs[0].startswith("n=") or len(attrs) < 2 or not attrs[1].startswith("r="):
            raise _malformed("expected user name and nonce")
        client_nonce = attrs[1][2:]
        if not _printable(client_nonce):
            raise _malformed("invalid nonce")
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64(secrets.token_bytes(NONCE_BYTES))
        s = self._secret
        self._server_first = f"r={self._nonce},s={_b64(s.salt)},i={s.iterations}"
        self._stage = 1
        return self._server_first.encode()

    def handle_client_final(self, data: bytes) -> bytes:
        """Take SASLResponse data (client-final-message); return server-final.

        Raises :class:`AuthFailed` if the proof is wrong.
        """
        if self._stage != 1:
            raise ProtocolError("unexpected SCRAM client-final message")
        self._stage = 2
        text = _text(data)
        attrs = text.split(",")
        if len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise _malformed("expected channel binding, nonce and proof")
        if not attrs[-1].startswith("p="):
            raise _malformed("proof expected as last attribute")
        if _unb64(attrs[0][2:]) != self._gs2_header.encode():
            raise _malformed("SCRAM channel binding check failed")
        if attrs[1][2:] != self._nonce:
            raise _malformed("nonce does not match")
        proof = _unb64(attrs[-1][2:])
        if len(proof) != 32:
            raise _malformed("invalid proof length")
        without_proof = text[: len(text) - len(attrs[-1]) - 1]
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        s = self._secret
        client_key = _xor(proof, _hmac(s.stored_key, auth_message))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), s.stored_key)
        if not ok or self._mock:
            raise AuthFailed()
        self._stage = 3
        self.recovered_keys = ScramKeys(client_key, s.server_key, s.salt, s.iterations)
        return f"v={_b64(_hmac(s.server_key, auth_message))}".encode()

    @property
    def done(self) -> bool:
        """True after a successful exchange."""
        return self._stage == 3


# --------------------------------------------------------------------------- client side


class ScramClient:
    """SCRAM-SHA-256 exchange with a PostgreSQL server (no channel binding)::

        client = ScramClient(user, password)          # or keys=server.recovered_keys
        mech = client.choose_mechanism(auth.mechanisms)   # AuthenticationSASL
        send(build.sasl_initial_response(mech, client.client_first()))
        send(build.sasl_response(client.handle_server_first(sasl_continue_data)))
        client.handle_server_final(sasl_final_data)   # AuthFailed if the server is fake

    ``keys`` (from :attr:`ScramServer.recovered_keys`) replaces the password for SCRAM
    pass-through; it only works if the server stores the same secret (same salt and
    iteration count), otherwise :class:`AuthFailed`.
    """

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_keys",
        "_nonce",
        "_password",
        "_server_signature",
        "_stage",
        "user",
    )

    mechanism = SCRAM_SHA_256

    def __init__(
        self, user: str, password: str | None = None, *, keys: ScramKeys | None = None
    ) -> None:
        if (password is None) == (keys is None):
            raise ValueError("give exactly one of password and keys")
        self.user = user
        self._password = password
        self._keys = keys
        self._nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        self._client_first_bare = ""
        self._server_signature = b""
        self._stage = 0

    def __repr__(self) -> str:
        return f"<ScramClient user={self.user!r} stage={self._stage}>"

    @staticmethod
    def choose_mechanism(mechanisms: list[str] | tuple[str, ...]) -> str:
        """Pick SCRAM-SHA-256 from an AuthenticationSASL list, else AuthFailed."""
        if SCRAM_SHA_256 not in mechanisms:
            raise AuthFailed(
                "none of the server's SASL authentication mechanisms are supported",
                "08P01",
            )
        return SCRAM_SHA_256

    def client_first(self) -> bytes:
        """The client-first-message (data of SASLInitialResponse)."""
        if self._stage != 0:
            raise ProtocolError("SCRAM client-first already sent")
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={name},r={self._nonce}"
        self._stage = 1
        return ("n,," + self._client_first_bare).encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Take AuthenticationSASLContinue data; return client-final (SASLResponse)."""
        if self._stage != 1:
            raise ProtocolError("unexpected SCRAM server-first message")
        self._stage = 2
        text = _text(data)
        attrs = text.split(",")
        if text.startswith("e="):
            raise AuthFailed(f"SCRAM error from server: {text[2:]}")
        if len(attrs) < 3 or [a[:2] for a in attrs[:3]] != ["r=", "s=", "i="]:
            raise _malformed("expected nonce, salt and iteration count")
        nonce = attrs[0][2:]
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise _malformed("server nonce does not extend the client nonce")
        if not _printable(nonce):
            raise _malformed("invalid nonce")
        salt = _unb64(attrs[1][2:])
        try:
            iterations = int(attrs[2][2:])
        except ValueError:
            raise _malformed("invalid iteration count") from None
        if not salt or not 1 <= iterations <= MAX_ITERATIONS:
            raise _malformed("invalid salt or iteration count")
        if self._keys is not None:
            k = self._keys
            if k.salt != salt or k.iterations != iterations:
                raise AuthFailed(
                    "SCRAM pass-through impossible: the server's SCRAM secret differs "
                    "from the pooler's"
                )
            client_key, server_key = k.client_key, k.server_key
            stored_key = hashlib.sha256(client_key).digest()
        else:
            assert self._password is not None
            client_key, stored_key, server_key = _keys(
                _salted_password(self._password, salt, iterations)
            )
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def handle_server_final(self, data: bytes) -> None:
        """Check AuthenticationSASLFinal data; AuthFailed if the signature is wrong."""
        if self._stage != 2:
            raise ProtocolError("unexpected SCRAM server-final message")
        self._stage = 3
        text = _text(data)
        if text.startswith("e="):
            raise AuthFailed(f"SCRAM error from server: {text[2:]}")
        if not text.startswith("v="):
            raise _malformed("server signature expected")
        signature = _unb64(text[2:].split(",")[0])
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthFailed("incorrect server signature")
        self._stage = 4

    @property
    def done(self) -> bool:
        return self._stage == 4
