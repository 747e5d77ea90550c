"""Hub login against the host's Unix accounts, through the authd socket.

The hub container holds no copy of /etc/shadow: every login asks authd on the host, which
runs PAM there, so a password changed with `passwd` over SSH is the one the next hub login
takes. authd only answers "ok" for members of the platform users group.
"""

from __future__ import annotations

import asyncio
import urllib.parse

from jupyterhub.auth import Authenticator
from tornado.web import Finish
from traitlets import Float, Unicode

from scirepo.authd import query


class ScirepoAuthenticator(Authenticator):
    """Authenticate with the host's PAM stack via scirepo-authd."""

    socket_path = Unicode(
        "/run/scirepo/authd.sock",
        config=True,
        help="Unix socket of scirepo-authd (mounted from the host).",
    )
    timeout = Float(15.0, config=True, help="Seconds to wait for authd.")
    password_change_url = Unicode(
        "",
        config=True,
        help="Where a user whose password has expired (a temporary one) is sent to change "
        "it instead of being logged in. Empty: such a login is refused.",
    )

    async def authenticate(self, handler, data):
        username = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        if not username or not password:
            return None
        try:
            answer = await asyncio.to_thread(
                query,
                self.socket_path,
                {"op": "authenticate", "username": username, "password": password},
                self.timeout,
            )
        except OSError as exc:
            self.log.error("authd unreachable at %s: %s", self.socket_path, exc)
            return None
        if not answer.get("ok"):
            self.log.warning("login refused for %s: %s", username, answer.get("error"))
            return None
        user = answer["user"]
        if answer.get("password_expired"):
            self.log.info("password of %s has expired: must change it first", username)
            if not self.password_change_url:
                return None
            args = urllib.parse.urlencode({"user": user["name"], "expired": "1"})
            handler.redirect(f"{self.password_change_url}?{args}")
            raise Finish()
        return {"name": user["name"], "groups": user.get("groups", []), "auth_state": None}
