"""A throwaway OpenLDAP server (Debian's `slapd`) for the LDAP authentication tests.

``Slapd(port).start()`` writes a slapd.conf (core, cosine, inetorgperson schemas; one mdb
database ``dc=example,dc=org`` whose root is ``cn=admin,dc=example,dc=org`` / ``admin_pw``) in
a temporary directory and runs slapd in the foreground on ``ldap://127.0.0.1:PORT``;
:meth:`add_user` adds ``uid=NAME,ou=people,dc=example,dc=org`` entries; :meth:`stop` ends it
and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import ldap3

BASE_DN = "dc=example,dc=org"
PEOPLE_DN = f"ou=people,{BASE_DN}"
ADMIN_DN, ADMIN_PW = f"cn=admin,{BASE_DN}", "admin_pw"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def find_slapd() -> str | None:
    return shutil.which("slapd") or next(
        (p for p in ("/usr/sbin/slapd",) if os.access(p, os.X_OK)), None
    )


def require_slapd() -> str:
    """slapd's path; skip the test when it is not installed (fail instead on CI)."""
    import pytest

    path = find_slapd()
    if path is None:
        message = "slapd is not installed (apt-get install slapd ldap-utils)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


class Slapd:
    def __init__(self, port: int, binary: str) -> None:
        self.port = port
        self.binary = binary
        self.url = f"ldap://127.0.0.1:{port}"
        self.dir = Path(tempfile.mkdtemp(prefix="pooler-slapd-"))
        self.log_path = self.dir / "slapd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Slapd:
        (self.dir / "db").mkdir()
        schemas = "\n".join(
            f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson")
        )
        conf = self.dir / "slapd.conf"
        conf.write_text(
            f"{schemas}\n"
            f"modulepath {MODULE_DIR}\nmoduleload back_mdb\n"
            f"pidfile {self.dir / 'slapd.pid'}\n"
            f'database mdb\nsuffix "{BASE_DN}"\nrootdn "{ADMIN_DN}"\nrootpw {ADMIN_PW}\n'
            f"directory {self.dir / 'db'}\nmaxsize 16777216\n"
        )
        with self.log_path.open("wb") as log:
            # -d: stay in the foreground (its stderr is the log), so stop() can end it
            self.proc = subprocess.Popen(
                [self.binary, "-f", str(conf), "-h", self.url, "-d", "256"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        from harness import wait_until

        wait_until(self._answers, timeout=10, message=lambda: f"slapd at {self.url}: {self.log()}")
        with self.admin() as conn:
            conn.add(BASE_DN, ["dcObject", "organization"], {"o": "example", "dc": "example"})
            conn.add(PEOPLE_DN, ["organizationalUnit"], {"ou": "people"})
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {self.proc.returncode}: {self.log()}")
        try:
            ldap3.Connection(ldap3.Server(self.url, connect_timeout=1), ADMIN_DN, ADMIN_PW).bind()
        except ldap3.core.exceptions.LDAPException:
            return False
        return True

    def admin(self) -> ldap3.Connection:
        conn = ldap3.Connection(ldap3.Server(self.url), ADMIN_DN, ADMIN_PW, raise_exceptions=True)
        conn.bind()
        return conn

    def add_user(self, uid: str, password: str, **attributes: str | list[str]) -> str:
        dn = f"uid={uid},{PEOPLE_DN}"
        with self.admin() as conn:
            conn.add(
                dn,
                ["inetOrgPerson"],
                {"uid": uid, "cn": uid, "sn": uid, "userPassword": password, **attributes},
            )
        return dn

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
