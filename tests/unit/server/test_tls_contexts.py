"""pooler/server/tls.py without sockets: tls_protocols parsing, contexts, the CN check."""

from __future__ import annotations

import ssl

import pytest

from pooler.config import Listen, Rule, Storage
from pooler.server import tls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, (None, None)),
        ("", (None, None)),
        ("tlsv1.2", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)),
        ("tlsv1.2,tlsv1.3", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)),
        ("TLSv1.3 : tlsv1.1", (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_3)),
        ("tls1_2", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)),
        ("secure", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)),
        ("all", (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_3)),
    ],
)
def test_parse_protocols(text, expected):
    assert tls.parse_protocols(text) == expected


def test_parse_protocols_rejects_unknown_names():
    with pytest.raises(tls.TLSConfigError, match="unknown TLS protocol 'sslv3'"):
        tls.parse_protocols("tlsv1.2,sslv3")


def test_listen_context_errors_are_config_errors(tmp_path):
    with pytest.raises(tls.TLSConfigError, match="needs tls_cert_file"):
        tls.listen_context(Listen(host="127.0.0.1", tls="require"))
    with pytest.raises(tls.TLSConfigError, match=r"listen 127\.0\.0\.1:6432"):
        tls.listen_context(
            Listen(host="127.0.0.1", tls="require", tls_cert_file=str(tmp_path / "missing.pem"))
        )


def test_storage_contexts_follow_libpq_sslmode(tmp_path):
    prefer = tls.storage_context(Storage(name="s", tls="prefer"))
    assert prefer.verify_mode == ssl.CERT_NONE and not prefer.check_hostname
    full = tls.storage_context(Storage(name="s", tls="verify_full"))
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    ca = tls.storage_context(Storage(name="s", tls="verify_ca", tls_protocols="tlsv1.3"))
    assert ca.verify_mode == ssl.CERT_REQUIRED and not ca.check_hostname
    assert ca.minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.storage_context(Storage(name="s", tls="verify_ca", tls_protocols="tlsv1.3")) is ca
    assert tls.storage_wants_tls(Storage(name="s", tls="prefer"), unix_socket=False)
    assert not tls.storage_wants_tls(Storage(name="s", tls="allow"), unix_socket=False)
    assert not tls.storage_wants_tls(Storage(name="s", tls="require"), unix_socket=True)


class FakeTransport:
    def __init__(self, tls_on: bool, cns: tuple[str, ...] = ()) -> None:
        self.extra = {
            "ssl_object": object() if tls_on else None,
            "peercert": {"subject": tuple((("commonName", cn),) for cn in cns)} if cns else None,
        }

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)


def test_common_name_check():
    rule = Rule(database="db", user="app", authentication="cert", auth_common_name=("alice",))
    check = tls.check_client_certificate
    assert check(FakeTransport(True, ("alice",)), rule, "app") is None
    assert "not allowed" in (check(FakeTransport(True, ("bob",)), rule, "app") or "")
    assert "valid client certificate" in (check(FakeTransport(True), rule, "app") or "")
    assert "not TLS" in (check(FakeTransport(False), rule, "app") or "")
    default = Rule(database="db", user="app", auth_common_name_default=True)
    assert check(FakeTransport(True, ("app",)), default, "app") is None
    wildcard = Rule(database="db", user=None, auth_common_name_default=True)
    assert check(FakeTransport(True, ("carol",)), wildcard, "carol") is None
    assert check(FakeTransport(True, ("carol",)), wildcard, "dave") is not None
