"""PAM client authentication (issue 18 item 9): `authentication "clear_text"` with
`auth_pam_service`, against a real PAM stack. The test writes a service file in /etc/pam.d
(root only) whose `pam_exec` module runs a script that accepts one user and password; the
script reads the password PAM hands it (`expose_authtok`) on its standard input.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import make_config, route

PAM_DIR = Path("/etc/pam.d")
PAM_EXEC = "pam_exec.so"


@pytest.fixture(scope="module")
def pam_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0 or not PAM_DIR.is_dir():
        message = "writing a PAM service file needs root and /etc/pam.d"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    script = tmp_path_factory.mktemp("pam") / "check.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "password = sys.stdin.buffer.read().split(b'\\0')[0].decode()\n"
        "sys.exit(0 if (os.environ.get('PAM_USER'), password) == ('carol', 'carol_pw') else 1)\n"
    )
    script.chmod(0o755)
    script.parent.chmod(0o755)
    name = f"pooler-test-{secrets.token_hex(4)}"
    service = PAM_DIR / name
    service.write_text(
        f"auth required {PAM_EXEC} expose_authtok quiet {script}\naccount required pam_permit.so\n"
    )
    try:
        yield name
    finally:
        service.unlink(missing_ok=True)


def test_pam_service_checks_the_password(pooler, pam_service) -> None:
    p = pooler(
        make_config(
            route(
                "postgres",
                authentication="clear_text",
                auth_pam_service=pam_service,
                storage_user="postgres",
            )
        )
    )
    assert p.sql("select current_user", user="carol", password="carol_pw") == [("postgres",)]
    for user, password in (("carol", "wrong"), ("dave", "carol_pw")):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            p.connect("postgres", user, password)
    p.wait_for_log("pam authentication failed")
