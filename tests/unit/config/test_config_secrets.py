"""Secrets (keywords.SECRET_KEYS) never leave the model in clear: not in a reload's diff, not in
the model the control socket hands out (`config_get`)."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any, get_args

from helpers_config import conf, ok

from pooler.config import Config, diff, keywords as kw
from pooler.config.model import redacted


def secrets_config(n: int) -> Config:
    top = f'ldap_endpoint "l" {{ ldapserver "s" ldapbasedn "dc=x" ldapbindpasswd "bind-{n}" }}\n'
    route = (
        f'password "pw-{n}" storage_password "storage-{n}" ldap_endpoint_name "l" '
        'ldap_storage_credentials_attr "a" ldap_storage_credentials "c" '
        f'{{ ldap_storage_username "u" ldap_storage_password "ldap-{n}" }}'
    )
    return ok(conf(top=top, route=route))


def secret_values(n: int) -> list[str]:
    return [f"bind-{n}", f"pw-{n}", f"storage-{n}", f"ldap-{n}"]


def model_field_names(cls: Any, seen: set[Any] | None = None) -> set[str]:
    """Every field name of the model's dataclasses, reachable from `cls`."""
    seen = set() if seen is None else seen
    if cls in seen or not is_dataclass(cls):
        return set()
    seen.add(cls)
    import typing

    hints = typing.get_type_hints(cls)
    names = set()
    for f in fields(cls):
        names.add(f.name)
        stack = [hints[f.name]]
        while stack:
            t = stack.pop()
            names |= model_field_names(t, seen)
            stack.extend(get_args(t))
    return names


def test_every_password_key_is_a_secret_of_the_model() -> None:
    passwords = {k for k in kw.KEYWORDS if "passw" in k and k != "password_passthrough"}
    assert passwords == kw.SECRET_KEYS
    assert model_field_names(Config) >= kw.SECRET_KEYS


def test_a_diff_names_changed_secrets_but_never_shows_them() -> None:
    old, new = secrets_config(1), secrets_config(2)
    changes = [str(c) for c in diff(old, new)]
    text = "\n".join(changes)
    for value in secret_values(1) + secret_values(2):
        assert value not in text, text
    for key in ("ldapbindpasswd", "password", "storage_password", "ldap_storage_credentials"):
        assert any(f"{key} changed" in c for c in changes), changes


def test_the_model_given_out_has_every_secret_blanked() -> None:
    config = secrets_config(1)
    text = json.dumps(redacted(config), default=str)
    for value in secret_values(1):
        assert value not in text
    assert text.count('"********"') == 4
    assert "ldap_storage_username" in text and '"u"' in text  # the rest is there
