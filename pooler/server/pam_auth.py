"""PAM client authentication (`auth_pam_service`), as odyssey does it, with python-pam.

A rule with `authentication "clear_text"` and `auth_pam_service "SERVICE"` checks the password
the client sends with `pam_authenticate` under /etc/pam.d/SERVICE (the user is the client's
user name; the password answers every prompt of the conversation). PAM modules block, so each
check runs in a thread of the worker's default executor.
"""

from __future__ import annotations

import asyncio


class PamRefused(Exception):
    """PAM said no; the message is PAM's reason (for the log, not the client)."""


def check(service: str, user: str, password: str) -> None:
    """Blocking: return when PAM accepts `password` for `user`, else raise PamRefused."""
    import pam  # python-pam: loads libpam only where PAM is used

    authenticator = pam.PamAuthenticator()
    if not authenticator.authenticate(user, password, service=service, resetcreds=False):
        raise PamRefused(f"{authenticator.reason} (code {authenticator.code})")


async def authenticate(service: str, user: str, password: str) -> None:
    """check() in a thread."""
    await asyncio.get_running_loop().run_in_executor(None, check, service, user, password)
