"""The accounts web service: signup form, admin review, password change (tornado).

It runs on the host as root (`scirepo accounts serve`, systemd unit scirepo-accounts),
listening on 127.0.0.1 only; nginx serves it at https://HOST/accounts/. Root, because
approving a request creates a Unix account and a password change runs chpasswd; the unit
sandboxes it (see the Ansible role `accounts`). Every form is CSRF-protected (tornado's
_xsrf cookie and field), and signup submissions are rate-limited per client address.

Admins are the hub's admins (users.admins): the admin pages log them in through the hub
(OAuth, the service `accounts` registered in the hub), so there is no second password.
Passwords are checked by authd (PAM), like the hub's logins.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import secrets
import time
import urllib.parse
from pathlib import Path

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from scirepo import authd, users
from scirepo.accounts import flow, mail
from scirepo.accounts.names import AccountInputError
from scirepo.accounts.store import PENDING, Store, StoreError, db_target

log = logging.getLogger("scirepo.accounts.web")

TEMPLATES = Path(__file__).parent / "templates"
PREFIX = "/accounts"
OAUTH_CLIENT = "service-accounts"
COOKIE_SECRET = "accounts_cookie_secret"  # noqa: S105 - a file name under paths.secrets
ADMIN_COOKIE = "scirepo-accounts-admin"
POLL_SECONDS = 2.0
WINDOW = 3600.0


class Service:
    """State shared by the handlers: config, database, rate limits, the worker's wake-up."""

    def __init__(self, cfg: dict, store: Store, smtp: mail.Smtp, hub_url: str,
                 hub_token: str) -> None:  # fmt: skip
        self.cfg, self.store, self.smtp = cfg, store, smtp
        self.hub_url, self.hub_token = hub_url.rstrip("/"), hub_token
        self.hits: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.wake = asyncio.Event()

    def over_limit(self, client: str) -> bool:
        """Record one submission of `client`; True if it is over the hourly limit."""
        hits, stamp = self.hits[client], time.monotonic()
        while hits and hits[0] < stamp - WINDOW:
            hits.popleft()
        if len(hits) >= self.cfg["accounts"]["rate_limit"]:
            return True
        hits.append(stamp)
        return False

    async def worker(self) -> None:
        """Provision approved requests and send queued mail, at once when woken."""
        # One thread with one connection for the whole life of the service: a sqlite
        # connection stays in its thread, and opening the file anew every round is waste.
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="provisioner")
        loop = asyncio.get_running_loop()
        worker = _Worker(self.store, self.cfg, self.smtp)
        while True:
            self.wake.clear()
            try:
                await loop.run_in_executor(executor, worker.run_once)
            except Exception:
                log.exception("provisioning or mail delivery failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)


class _Worker:
    """The provisioner's side: its own connection, opened in its thread on first use."""

    def __init__(self, main: Store, cfg: dict, smtp: mail.Smtp) -> None:
        self.main, self.cfg, self.smtp, self.store = main, cfg, smtp, None

    def run_once(self) -> None:
        if self.store is None:
            self.store = Store(self.main.target, self.main.path.parent)
        flow.run_once(self.store, self.cfg, self.smtp)


class Base(tornado.web.RequestHandler):
    def initialize(self, service: Service) -> None:
        self.service = service
        self.cfg = service.cfg

    def client(self) -> str:
        # nginx on the same host passes the real address; nobody else may set it.
        if self.request.remote_ip in ("127.0.0.1", "::1"):
            return self.request.headers.get("X-Real-IP", self.request.remote_ip)
        return self.request.remote_ip

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
        self.set_header("Cache-Control", "no-store")

    def page(self, template: str, status: int = 200, **values) -> None:
        self.set_status(status)
        self.render(template, site=self.cfg["site"], prefix=PREFIX, **values)

    def message(self, title: str, text: str, status: int = 200) -> None:
        self.page("message.html", status, title=title, text=text)

    def write_error(self, status_code: int, **kwargs) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and "xsrf" in (exc.log_message or ""):
            reason = (
                "The form was not sent from this site or has expired (missing or wrong "
                "CSRF token). Reload the page and send it again."
            )
        self.message(f"Error {status_code}", reason, status_code)

    def get_current_user(self) -> str | None:
        name = self.get_secure_cookie(ADMIN_COOKIE, max_age_days=0.5)
        if name and name.decode() in self.cfg["users"]["admins"]:
            return name.decode()
        return None


class SignupHandler(Base):
    def get(self) -> None:
        self.page("signup.html", form={}, errors={}, policy=self.cfg["accounts"]["policy"])

    def post(self) -> None:
        fields = ("full_name", "email", "institution", "purpose", "ssh_key", "policy", "website")
        form = {k: self.get_body_argument(k, "") for k in fields}
        client = self.client()
        if self.service.over_limit(client):
            log.warning("rate limit: %s", client)
            self.message(
                "Too many requests",
                "Too many signup requests came from your address in the last hour. "
                "Please try again later.",
                429,
            )
            return
        if form["website"]:  # the honeypot: only robots fill in a field nobody sees
            log.warning("honeypot field filled by %s; nothing stored", client)
            self.page("received.html", rid=None, email="")
            return
        try:
            rid = flow.submit(self.service.store, self.cfg, form, client)
        except flow.FormError as exc:
            form.pop("website")
            self.page("signup.html", 400, form=form, errors=exc.errors,
                      policy=self.cfg["accounts"]["policy"])  # fmt: skip
            return
        self.service.wake.set()
        self.page("received.html", rid=rid, email=form["email"].strip())


class PasswordHandler(Base):
    def get(self) -> None:
        self.page("password.html", user=self.get_argument("user", ""), error="",
                  expired=bool(self.get_argument("expired", "")))  # fmt: skip

    async def post(self) -> None:
        arg = self.get_body_argument
        username, old = arg("username", "").strip(), arg("current", "")
        new, repeat = arg("new", ""), arg("repeat", "")
        answer = {"ok": False}
        if username and old:
            answer = await authd.aquery(
                self.cfg["paths"]["authd_socket"],
                {"op": "authenticate", "username": username, "password": old},
            )
        error = None if answer.get("ok") else "Wrong username or current password."
        error = error or flow.check_new_password(self.cfg, username, old, new, repeat)
        if error:
            self.page("password.html", 400, user=username, error=error, expired=False)
            return
        await asyncio.to_thread(users.set_password, username, new)
        with self.service.store.transaction() as db:
            Store.log(db, None, f"user:{username}", "password changed", self.client())
        self.message(
            "Password changed",
            "Your new password works now for SSH, JupyterLab and these pages.",
        )


class AdminHandler(Base):
    def get_login_url(self) -> str:
        return f"{PREFIX}/oauth_login"

    @tornado.web.authenticated
    def get(self) -> None:
        store = self.service.store
        self.page(
            "admin.html",
            admin=self.current_user,
            pending=store.list((PENDING,)),
            recent=store.db.execute(
                "SELECT * FROM requests WHERE state != ? ORDER BY updated DESC LIMIT 50",
                (PENDING,),
            ).fetchall(),
            failed=store.db.execute("SELECT * FROM mails WHERE state = 'failed'").fetchall(),
            note=self.get_argument("note", ""),
        )

    @tornado.web.authenticated
    def post(self, rid: str) -> None:
        action = self.get_body_argument("action", "")
        actor = f"admin:{self.current_user}"
        store = self.service.store
        try:
            if action == "approve":
                username = self.get_body_argument("username", "").strip() or None
                req = store.get(int(rid))
                if username == req["username"]:
                    username = None
                flow.approve(store, self.cfg, rid, actor, username)
                note = f"Request {rid} approved; the account is being created."
            elif action == "reject":
                flow.reject(store, self.cfg, rid, actor, self.get_body_argument("reason", ""))
                note = f"Request {rid} rejected."
            else:
                raise tornado.web.HTTPError(400, f"unknown action {action!r}")
        except (StoreError, AccountInputError) as exc:
            note = f"Request {rid}: {exc}"
        self.service.wake.set()
        self.redirect(f"{PREFIX}/admin?note={urllib.parse.quote(note)}")


class OAuthLoginHandler(Base):
    def get(self) -> None:
        state = secrets.token_urlsafe(24)
        self.set_secure_cookie("scirepo-accounts-oauth", state, expires_days=None,
                               httponly=True, secure=True, samesite="Lax")  # fmt: skip
        query = urllib.parse.urlencode({
            "client_id": OAUTH_CLIENT,
            "redirect_uri": f"{PREFIX}/oauth_callback",
            "response_type": "code",
            "state": state,
        })  # fmt: skip
        self.redirect(f"/hub/api/oauth2/authorize?{query}")


class OAuthCallbackHandler(Base):
    async def get(self) -> None:
        expected = self.get_secure_cookie("scirepo-accounts-oauth", max_age_days=0.1)
        state, code = self.get_argument("state", ""), self.get_argument("code", "")
        if not expected or not secrets.compare_digest(expected.decode(), state) or not code:
            raise tornado.web.HTTPError(403, "OAuth state mismatch: start again from the page")
        self.clear_cookie("scirepo-accounts-oauth")
        http = AsyncHTTPClient()
        svc = self.service
        try:
            token = await http.fetch(
                f"{svc.hub_url}/hub/api/oauth2/token",
                method="POST",
                body=urllib.parse.urlencode(
                    {
                        "client_id": OAUTH_CLIENT,
                        "client_secret": svc.hub_token,
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": f"{PREFIX}/oauth_callback",
                    }
                ),  # fmt: skip
            )
            access = json.loads(token.body)["access_token"]
            who = await http.fetch(
                f"{svc.hub_url}/hub/api/user", headers={"Authorization": f"token {access}"}
            )
        except HTTPClientError as exc:
            log.error("OAuth with the hub failed: %s", exc)
            raise tornado.web.HTTPError(403, "the hub did not confirm your login") from None
        name = json.loads(who.body)["name"]
        if name not in self.cfg["users"]["admins"]:
            self.message(
                "Not an administrator",
                f"You are logged in to the hub as {name}, who is not an administrator.",
                403,
            )
            return
        self.set_secure_cookie(ADMIN_COOKIE, name, expires_days=None, httponly=True,
                               secure=True, samesite="Lax")  # fmt: skip
        self.redirect(f"{PREFIX}/admin")


class HealthHandler(Base):
    def get(self) -> None:
        self.service.store.db.execute("SELECT 1").fetchone()
        self.set_header("Content-Type", "text/plain")
        self.finish("ok\n")


def make_app(service: Service, cookie_secret: str) -> tornado.web.Application:
    kw = {"service": service}
    return tornado.web.Application(
        [
            (rf"{PREFIX}/?", SignupHandler, kw),
            (rf"{PREFIX}/password", PasswordHandler, kw),
            (rf"{PREFIX}/admin", AdminHandler, kw),
            (rf"{PREFIX}/admin/requests/(\d+)", AdminHandler, kw),
            (rf"{PREFIX}/oauth_login", OAuthLoginHandler, kw),
            (rf"{PREFIX}/oauth_callback", OAuthCallbackHandler, kw),
            (rf"{PREFIX}/health", HealthHandler, kw),
        ],
        template_path=str(TEMPLATES),
        cookie_secret=cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"secure": True, "httponly": True, "samesite": "Strict"},
        autoescape="xhtml_escape",
    )


async def serve(cfg: dict, port: int) -> None:
    store = Store(db_target(cfg))
    secret_dir = Path(cfg["paths"]["secrets"])
    service = Service(
        cfg,
        store,
        mail.smtp_from_config(cfg),
        "http://127.0.0.1:8000",
        (secret_dir / flow.HUB_TOKEN).read_text().strip(),
    )
    app = make_app(service, (secret_dir / COOKIE_SECRET).read_text().strip())
    app.listen(port, address="127.0.0.1", xheaders=False)
    log.info("accounts service on 127.0.0.1:%d", port)
    await service.worker()
