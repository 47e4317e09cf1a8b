"""odyssey's hba_file format (odyssey.md §1.10): text -> `HbaRule`s and diagnostics."""

from __future__ import annotations

import ipaddress

from pooler.config import keywords as kw
from pooler.config.errors import Diagnostic, Pos
from pooler.config.model import HbaRule


def parse_hba(text: str, file: str) -> tuple[list[HbaRule], list[Diagnostic]]:
    """Parse odyssey's hba_file format (odyssey.md §1.10)."""
    rules: list[HbaRule] = []
    errors: list[Diagnostic] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0]
        fields = stripped.split()
        if not fields:
            continue
        column = len(line) - len(line.lstrip()) + 1
        pos = Pos(file, number, column)
        conn_type = fields[0].lower()
        if conn_type not in kw.CONNECTION_TYPES:
            errors.append(Diagnostic(pos, f"unknown connection type '{fields[0]}' in hba file"))
            continue
        expected = 4 if conn_type == "local" else (5, 6)
        if (conn_type == "local" and len(fields) != 4) or (
            conn_type != "local" and len(fields) not in (5, 6)
        ):
            errors.append(
                Diagnostic(
                    pos,
                    f"wrong number of fields in hba line ({len(fields)}; expected {expected})",
                )
            )
            continue
        address = None
        if conn_type != "local":
            address = fields[3] if len(fields) == 5 else f"{fields[3]}/{fields[4]}"
            try:
                address = str(ipaddress.ip_network(address, strict=False))
            except ValueError:
                errors.append(Diagnostic(pos, f"invalid address in hba line: '{address}'"))
                continue
        method = fields[-1].lower()
        if method not in ("allow", "trust", "deny", "reject"):
            errors.append(
                Diagnostic(
                    pos,
                    f"unknown auth method '{fields[-1]}' (only allow/trust/deny/reject supported)",
                )
            )
            continue
        rules.append(
            HbaRule(
                conn_type=conn_type,
                databases=tuple(fields[1].split(",")),
                users=tuple(fields[2].split(",")),
                address=address,
                method=method,
                pos=pos,
            )
        )
    return rules, errors
