"""scirepo-singleuser: a user's Jupyter Server, logged in through JupyterHub.

The image's command. It does what `jupyterhub-singleuser` (JupyterHub's server extension)
does for scirepo's hub, without importing the `jupyterhub` package: that import alone
(SQLAlchemy, Alembic, the hub's ORM, pulled in by jupyterhub.services.auth, .utils and
.log) costs every idle server about 40 MiB and slows every start (`make bench`). Same protocol,
same environment (the JUPYTERHUB_* variables the spawner sets), same URLs:

- a request is authenticated by a hub token in the `Authorization: token|bearer` header
  or the `?token=` URL parameter, or by the OAuth cookie; the token's owner and scopes
  come from the hub's /hub/api/user and are kept for CACHE_SECONDS;
- only a user whose scopes grant one of $JUPYTERHUB_OAUTH_ACCESS_SCOPES
  (`access:servers!server=<user>/<name>` or broader) gets in; anyone else gets 403;
- a browser without a cookie goes through the hub's OAuth (authorization code with PKCE,
  a state cookie bound to the request); /oauth_callback trades the code for a token and
  keeps it in a signed, HttpOnly cookie limited to the server's path, Secure on HTTPS;
- requests authenticated by cookie need Jupyter Server's XSRF token (its own checks), which
  is tied to the login so that another server on the same origin cannot plant one;
- /logout clears the cookie and goes on to the hub's logout;
- the server's last activity is posted to the hub every $JUPYTERHUB_ACTIVITY_INTERVAL s;
- JupyterLab's page config carries the hub's URLs (its Hub menu) and the user's token.

What it leaves out, and says so at start when asked for it: per-user config being
disabled ($JUPYTERHUB_DISABLE_USER_CONFIG), internal TLS ($JUPYTERHUB_SSL_*), group-based
access scopes (`access:servers!group=...`, which jupyterhub's own check does not resolve
either). scirepo's hub sets none of them.
"""

# ruff: noqa: E402 - the record of regular expressions and the deferred modules are installed
# before the imports

from __future__ import annotations

# First of all: the regular expressions recorded when the image was built are not compiled
# again by the imports below and the server's setup (regexes.py).
from scirepo_singleuser import regexes as _regexes

_regexes.install()

# Then: the modules the imports below make but the start never uses are not run until
# their first use (deferred.py).
from scirepo_singleuser import deferred as _deferred

_deferred.install()

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import secrets
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlencode, urlparse

from jupyter_server.auth import IdentityProvider, User
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.gateway.gateway_client import GatewayClient
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import url_concat
from traitlets import default

try:
    from jupyter_server.auth.decorator import allow_unauthenticated
except ImportError:  # jupyter_server < 2.13: every handler may be reached unauthenticated

    def allow_unauthenticated(method):
        return method


CACHE_SECONDS = 300  # how long a token's hub answer is trusted (jupyterhub's default)
STATE_SECONDS = 600  # how long an OAuth login may take
# Anyone who reaches the proxy can send tokens and start logins: neither may grow the
# server's memory without bound. The oldest entries go first.
CACHE_MAX = 1000  # hub answers kept
STATES_MAX = 100  # logins under way
CSP = "frame-ancestors 'none'"


def _hub_version() -> str:
    """The version of the hub API spoken: the image's jupyterhub package, which the hub's
    version equals (images/base/requirements.in)."""
    try:
        return version("jupyterhub")
    except PackageNotFoundError:
        return ""


def _keep_newest(entries: dict, limit: int) -> None:
    """Drop the oldest entries of the insertion-ordered `entries` beyond `limit`."""
    for key in list(itertools.islice(entries, max(0, len(entries) - limit))):
        del entries[key]


class ConfigError(RuntimeError):
    """The environment the hub gave is missing something or asks for what this server does
    not do."""


def _join(*parts: str) -> str:
    """URL path join keeping a leading and a trailing slash: _join('/hub/', 'api') ->
    '/hub/api'."""
    out = parts[0]
    for part in parts[1:]:
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


def scope_grants(have: str, need: str) -> bool:
    """True when the hub scope `have` includes `need`, for the filters a server's access
    scopes use: `access:servers` > `access:servers!user=U` > `access:servers!server=U/S`."""
    have_base, _, have_filter = have.partition("!")
    need_base, _, need_filter = need.partition("!")
    if have_base != need_base:
        return False
    if not have_filter or have_filter == need_filter:
        return True
    kind, _, value = need_filter.partition("=")
    return kind == "server" and have_filter == "user=" + value.partition("/")[0]


def has_access(scopes, access_scopes) -> bool:
    return any(scope_grants(h, n) for h in scopes for n in access_scopes)


class HubSettings:
    """What the hub's spawner put in the environment, read once and checked."""

    def __init__(self, env=os.environ):
        missing = [
            key
            for key in (
                "JUPYTERHUB_API_TOKEN",
                "JUPYTERHUB_API_URL",
                "JUPYTERHUB_CLIENT_ID",
                "JUPYTERHUB_SERVICE_PREFIX",
                "JUPYTERHUB_SERVICE_URL",
                "JUPYTERHUB_USER",
                "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
            )
            if not env.get(key)
        ]
        if missing:
            raise ConfigError(f"missing in the environment: {', '.join(missing)}")
        for key in ("JUPYTERHUB_DISABLE_USER_CONFIG", "JUPYTERHUB_SSL_KEYFILE"):
            if env.get(key, "").strip().lower() not in ("", "0", "false", "no"):
                raise ConfigError(f"{key} is set; scirepo-singleuser does not support it")
        self.api_token = env["JUPYTERHUB_API_TOKEN"]
        self.api_url = env["JUPYTERHUB_API_URL"].rstrip("/")
        self.client_id = env["JUPYTERHUB_CLIENT_ID"]
        self.base_url = _join(env["JUPYTERHUB_SERVICE_PREFIX"], "")
        self.service_url = env["JUPYTERHUB_SERVICE_URL"]
        self.user = env["JUPYTERHUB_USER"]
        self.server_name = env.get("JUPYTERHUB_SERVER_NAME", "")
        self.hub_host = env.get("JUPYTERHUB_HOST", "")
        self.hub_prefix = _join(env.get("JUPYTERHUB_BASE_URL") or "/", "hub/")
        self.callback_url = env.get("JUPYTERHUB_OAUTH_CALLBACK_URL") or _join(
            self.base_url, "oauth_callback"
        )
        try:
            self.access_scopes = set(json.loads(env["JUPYTERHUB_OAUTH_ACCESS_SCOPES"]))
            self.cookie_options = json.loads(env.get("JUPYTERHUB_COOKIE_OPTIONS") or "{}")
        except ValueError as e:
            raise ConfigError(f"a JUPYTERHUB_* variable is not valid JSON: {e}") from e
        self.activity_url = env.get("JUPYTERHUB_ACTIVITY_URL", "")
        self.activity_interval = int(env.get("JUPYTERHUB_ACTIVITY_INTERVAL") or 300)
        self.default_url = env.get("JUPYTERHUB_DEFAULT_URL", "")
        self.root_dir = env.get("JUPYTERHUB_ROOT_DIR", "")

    @property
    def cookie_name(self) -> str:
        return self.client_id

    @property
    def state_cookie_name(self) -> str:
        return self.client_id + "-oauth-state"


class HubUser(User):
    """A Jupyter Server user with the hub's model of it (name, scopes, ...)."""

    hub_user: dict

    def __init__(self, model: dict):
        self.hub_user = model
        super().__init__(username=model["name"])


def _cache_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class HubClient:
    """Calls to the hub's REST API: who owns a token (cached), tokens for OAuth codes,
    activity."""

    def __init__(self, hub: HubSettings, log):
        self.hub = hub
        self.log = log
        self.http = AsyncHTTPClient()
        self._cache: dict[str, tuple[float, dict | None]] = {}

    async def _request(self, url: str, headers: dict, **kwargs) -> dict | None:
        """The JSON answer of the hub, None on 401/403, HTTP 502 when the hub fails.
        Authorized with the server's own token unless `headers` names another."""
        headers = {"Authorization": f"token {self.hub.api_token}", **headers}
        try:
            res = await self.http.fetch(
                HTTPRequest(url, headers=headers, request_timeout=30, **kwargs)
            )
        except (HTTPClientError, OSError) as e:
            if getattr(e, "code", None) in (401, 403):
                return None
            self.log.error("hub request %s failed: %s", url, e)
            raise web.HTTPError(502, "the hub did not answer") from e
        return json.loads(res.body) if res.body else {}

    async def user_for_token(self, token: str) -> dict | None:
        """The hub's model of the owner of `token` with the token's scopes; None when the
        hub does not know the token."""
        key = _cache_key(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        model = await self._request(
            self.hub.api_url + "/user", headers={"Authorization": f"token {token}"}
        )
        self._cache.pop(key, None)  # a renewed answer counts as the newest
        self._cache[key] = (now, model)
        _keep_newest(self._cache, CACHE_MAX)
        return model

    def forget(self, token: str) -> None:
        self._cache.pop(_cache_key(token), None)

    async def token_for_code(self, code: str, verifier: str) -> str:
        params = {
            "client_id": self.hub.client_id,
            "client_secret": self.hub.api_token,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.hub.callback_url,
            "code_verifier": verifier,
        }
        reply = await self._request(
            self.hub.api_url + "/oauth2/token",
            method="POST",
            body=urlencode(params),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if not reply or not reply.get("access_token"):
            raise web.HTTPError(403, "the hub refused the login code")
        return reply["access_token"]

    async def post_activity(self, when: datetime) -> None:
        when = when if when.tzinfo else when.replace(tzinfo=UTC)  # naive times are UTC
        stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
        body = {"servers": {self.hub.server_name: {"last_activity": stamp}}, "last_activity": stamp}
        await self._request(
            self.hub.activity_url,
            method="POST",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )


def _is_https(handler) -> bool:
    return handler.request.protocol == "https"  # X-Forwarded-Proto counts: trust_xheaders


class HubIdentityProvider(IdentityProvider):
    """Jupyter Server's IdentityProvider answered by the hub (see the module's text)."""

    @default("token")
    def _no_token(self):
        return ""  # no server token: only the hub's tokens open this server

    @default("login_handler_class")
    def _login_handler(self):
        return HubLoginHandler

    @default("logout_handler_class")
    def _logout_handler(self):
        return HubLogoutHandler

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hub = HubSettings()
        self.client = HubClient(self.hub, self.log)
        self.states: dict[str, dict] = {}

    # -- who is asking ----------------------------------------------------------------
    def _request_token(self, handler) -> str:
        token = handler.get_argument("token", "")
        if token:
            return token
        kind, _, value = handler.request.headers.get("Authorization", "").partition(" ")
        return value.strip() if kind.lower() in ("token", "bearer") else ""

    def cookie_token(self, handler) -> str:
        value = handler.get_secure_cookie(self.hub.cookie_name, max_age_days=31)
        return value.decode("ascii", "replace") if value else ""

    async def get_user(self, handler):
        if hasattr(handler, "_hub_user"):
            return handler._hub_user
        handler._hub_user = None
        model = None
        token = self._request_token(handler)
        if token:
            model = await self.client.user_for_token(token)
            if model:
                handler._token_authenticated = True
        if model is None:
            token = self.cookie_token(handler)
            if token:
                model = await self.client.user_for_token(token)
                if model is None:
                    self.log.info("the token in the login cookie is no longer valid")
                    self.clear_cookie(handler)
                else:
                    self._bind_xsrf(handler, token)
        if model is None:
            return None
        if not self.allowed(model):
            self.log.warning("%s %s may not use this server", model.get("kind"), model.get("name"))

            def refuse(*args, **kwargs):
                raise web.HTTPError(403, f"{model.get('name')} may not use this server")

            handler.redirect = refuse  # logged in elsewhere: a 403, never a login loop
            return None
        handler._hub_user = HubUser(model)
        if getattr(handler, "_token_authenticated", False) and handler.get_argument("token", ""):
            self._keep_url_token(handler, token)
        return handler._hub_user

    def allowed(self, model: dict) -> bool:
        """Whether the hub's model of a token grants one of this server's access scopes."""
        return has_access(model.get("scopes", ()), self.hub.access_scopes)

    def _bind_xsrf(self, handler, token: str) -> None:
        """Tie the XSRF token of a cookie login to that login's token.

        Tornado's check compares the `_xsrf` cookie with the X-XSRFToken header. All servers
        share one origin, so a page of another user's server could set an `_xsrf` cookie
        on this server's path and send the same value (cookie tossing). Here the token
        that counts is an HMAC of the login's token with the server's cookie secret: a
        cookie that does not carry it is ignored, and tornado sets the right one the next
        time a page asks for the XSRF token. (Uses tornado's `_decode_xsrf_token` and
        `_raw_xsrf_token`; tornado is pinned in the lock and the tests toss a cookie.)
        """
        secret = handler.settings["cookie_secret"]
        secret = secret if isinstance(secret, bytes) else secret.encode()
        want = hmac.new(secret, b"xsrf:" + token.encode("utf-8", "replace"), "sha256").digest()
        want = want[:16]
        cookie = handler.get_cookie(handler.settings.get("xsrf_cookie_name", "_xsrf"))
        version, raw, stamp = handler._decode_xsrf_token(cookie) if cookie else (None, None, None)
        if raw is not None and hmac.compare_digest(raw, want):
            handler._raw_xsrf_token = (version, raw, stamp)
        else:
            handler._raw_xsrf_token = (None, want, time.time())

    def _keep_url_token(self, handler, token: str) -> None:
        """A page opened with ?token= stays logged in: the token goes into the cookie
        (page loads only, never a websocket or an API call)."""
        if (
            handler.request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate"
            and (handler.request.method == "GET")
            and not handler.request.headers.get("Upgrade")
        ):
            self.set_cookie(handler, token)

    # -- cookies ------------------------------------------------------------------------
    def _cookie_kwargs(self, handler) -> dict:
        kwargs = {"path": self.hub.base_url, "httponly": True}
        if _is_https(handler):
            kwargs["secure"] = True
        return kwargs

    def set_cookie(self, handler, token: str) -> None:
        kwargs = {**self._cookie_kwargs(handler), **self.hub.cookie_options}
        handler.set_secure_cookie(self.hub.cookie_name, token, **kwargs)

    def clear_cookie(self, handler) -> None:
        handler.clear_cookie(self.hub.cookie_name, path=self.hub.base_url)

    # -- OAuth --------------------------------------------------------------------------
    def safe_next(self, next_url: str) -> str:
        """`next_url` if it is a path on this server, else the server's root: a login can
        never send the browser elsewhere."""
        parsed = urlparse(next_url or "")
        if (
            parsed.scheme
            or parsed.netloc
            or next_url.startswith("//")
            or "\\" in next_url
            or not next_url.startswith(self.hub.base_url)
        ):
            return self.hub.base_url
        return next_url

    def begin_login(self, handler, next_url: str) -> str:
        """Remember a login in a state and its cookie; the hub's authorize URL to go to."""
        now = time.monotonic()
        self.states = {k: v for k, v in self.states.items() if now - v["t"] < STATE_SECONDS}
        state = secrets.token_urlsafe(16)
        verifier = secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        self.states[state] = {"t": now, "next": self.safe_next(next_url), "verifier": verifier}
        _keep_newest(self.states, STATES_MAX)
        handler.set_secure_cookie(
            self.hub.state_cookie_name,
            state,
            max_age=STATE_SECONDS,
            **{**self.hub.cookie_options, **self._cookie_kwargs(handler)},
        )
        return url_concat(
            self.hub.hub_host + _join(self.hub.hub_prefix, "api/oauth2/authorize"),
            {
                "client_id": self.hub.client_id,
                "redirect_uri": self.hub.callback_url,
                "response_type": "code",
                "state": state,
                "code_challenge": challenge.decode().rstrip("="),
                "code_challenge_method": "S256",
            },
        )

    def take_state(self, handler, state: str) -> dict:
        """The login that `state` names, if the browser holds its cookie; forgotten after."""
        cookie = handler.get_secure_cookie(self.hub.state_cookie_name, max_age_days=1)
        handler.clear_cookie(self.hub.state_cookie_name, path=self.hub.base_url)
        if not state or not cookie or not secrets.compare_digest(cookie.decode(), state):
            raise web.HTTPError(403, "OAuth state does not match; log in again")
        found = self.states.pop(state, None)
        if not found or time.monotonic() - found["t"] > STATE_SECONDS:
            raise web.HTTPError(403, "OAuth state has expired; log in again")
        return found

    # -- Jupyter Server hooks -----------------------------------------------------------
    def get_handlers(self):
        return [
            (r"/login", self.login_handler_class),
            (r"/logout", self.logout_handler_class),
            (r"/oauth_callback", HubOAuthCallbackHandler),
        ]

    def validate_security(self, app, ssl_options=None):
        return  # every request is checked with the hub; nothing to warn about

    def page_config_hook(self, handler, page_config: dict) -> dict:
        """What JupyterLab's hub extension reads (its Hub menu), and the token the page
        uses for its API calls (the one in the cookie)."""
        user = handler.current_user
        hub = self.hub
        page_config["hubUser"] = user.username if user else ""
        page_config["hubServerUser"] = hub.user
        page_config["hubPrefix"] = hub.hub_prefix
        page_config["hubHost"] = hub.hub_host
        page_config["shareUrl"] = _join(hub.hub_prefix, "user-redirect")
        page_config["hubServerName"] = hub.server_name
        page_config["token"] = self._request_token(handler) or self.cookie_token(handler)
        return page_config


class HubLoginHandler(JupyterHandler):
    """/login: on to the hub's OAuth, back to `next` afterwards."""

    @allow_unauthenticated
    def get(self):
        ip = self.identity_provider
        self.redirect(ip.begin_login(self, self.get_argument("next", "")))


class HubOAuthCallbackHandler(JupyterHandler):
    """/oauth_callback: the hub sends the browser here with a code after login."""

    @allow_unauthenticated
    async def get(self):
        ip = self.identity_provider
        error = self.get_argument("error", "")
        if error:
            raise web.HTTPError(400, f"the hub answered the login with an error: {error}")
        login = ip.take_state(self, self.get_argument("state", ""))
        code = self.get_argument("code", "")
        if not code:
            raise web.HTTPError(400, "no OAuth code")
        token = await ip.client.token_for_code(code, login["verifier"])
        model = await ip.client.user_for_token(token)
        if not model or not ip.allowed(model):
            name = model.get("name") if model else "this login"
            raise web.HTTPError(403, f"{name} may not use this server")
        ip.set_cookie(self, token)
        self.redirect(login["next"])


class HubLogoutHandler(JupyterHandler):
    """/logout: forget the cookie here, then log out of the hub."""

    @allow_unauthenticated
    def get(self):
        ip = self.identity_provider
        token = ip.cookie_token(self)
        if token:
            ip.client.forget(token)
        ip.clear_cookie(self)
        self.redirect(ip.hub.hub_host + _join(ip.hub.hub_prefix, "logout"))


class ScirepoSingleUser(ExtensionApp):
    """The server: Jupyter Server with the extensions installed (JupyterLab), configured
    from the hub's environment and logged in through the hub."""

    name = "scirepo-singleuser"
    load_other_extensions = True
    description = __doc__

    _activity_task = None

    def load_config_file(self):
        """Configure the server from the environment. Set here, above config files, the way
        jupyterhub-singleuser does; options on the command line (c.Spawner.args) win."""
        try:
            hub = HubSettings()
        except ConfigError as e:
            self.log.critical("scirepo-singleuser: %s", e)
            self.exit(1)
        cfg = self.config.ServerApp
        cfg.identity_provider_class = HubIdentityProvider
        cfg.allow_remote_access = True
        cfg.open_browser = False
        cfg.trust_xheaders = True
        cfg.quit_button = False
        cfg.port_retries = 0
        cfg.answer_yes = True
        self.config.FileContentsManager.delete_to_trash = False
        if hub.root_dir:
            cfg.root_dir = os.path.expanduser(hub.root_dir)
        url = urlparse(hub.service_url)
        cfg.port = url.port or (443 if url.scheme == "https" else 80)
        cfg.ip = url.hostname or ""
        cfg.base_url = hub.base_url
        # The page a login lands on. Set on this app too: as the starting extension its
        # default_url ("/", a bare "server is running" page) is the server's otherwise.
        if hub.default_url:
            cfg.default_url = self.default_url = hub.default_url
        elif "lab" in self.serverapp.extension_manager.extension_points:
            cfg.default_url = self.default_url = "/lab"
        # Kernel specs without importing IPython into the server (kernelspecs.py), unless a
        # config file names its own manager or a kernel gateway runs the kernels.
        # (The server makes the same GatewayClient singleton, from the same config, later.)
        server = self.serverapp
        if (
            "kernel_spec_manager_class" not in server.config.ServerApp
            and not GatewayClient.instance(parent=server).gateway_enabled
        ):
            cfg.kernel_spec_manager_class = "scirepo_singleuser.kernelspecs.KernelSpecs"
        for cls_name, cls_config in (self.serverapp.cli_config or {}).items():
            if cls_name in self.config:
                self.config[cls_name].merge(cls_config)
        self.serverapp.update_config(self.config)

    def initialize(self, argv=None):
        super().initialize()
        # JupyterLab's settings API without work that changes nothing (labsettings.py).
        from scirepo_singleuser import labsettings  # noqa: PLC0415

        labsettings.apply()
        app = self.serverapp
        if not isinstance(app.identity_provider, HubIdentityProvider):
            self.log.critical("scirepo-singleuser: the hub's login is not in effect; stopping")
            self.exit(1)
        settings = app.web_app.settings
        settings["page_config_hook"] = app.identity_provider.page_config_hook
        headers = settings.setdefault("headers", {})
        headers.setdefault("Content-Security-Policy", CSP)
        headers["X-JupyterHub-Version"] = _hub_version()

    async def _start_jupyter_server_extension(self, serverapp):
        # The server serves: the recorded regular expressions have served its start.
        # Python's own compile is back, and the record (0.57 MiB) is not kept for the life
        # of the server.
        _regexes.uninstall()
        # Imports are as usual from now on (a module deferred so far runs at its first use).
        _deferred.uninstall()
        if serverapp.identity_provider.hub.activity_url:
            self._activity_task = asyncio.ensure_future(self._report_activity())

    async def _report_activity(self):
        """Post the server's last activity to the hub (for the idle culler), on an interval
        with 20% jitter so that many servers do not call at once."""
        ip = self.serverapp.identity_provider
        interval = ip.hub.activity_interval
        sent = None
        while True:
            last = self.serverapp.web_app.last_activity()
            if last and (sent is None or last > sent):
                try:
                    await ip.client.post_activity(last)
                    sent = last
                except Exception as e:  # noqa: BLE001 - reported, tried again next time
                    self.log.error("could not report activity to the hub: %s", e)
            await asyncio.sleep(interval * (0.9 + 0.2 * random.random()))  # noqa: S311

    async def stop_extension(self):
        if self._activity_task:
            self._activity_task.cancel()


def _jupyter_server_extension_points():
    return [{"module": "scirepo_singleuser", "app": ScirepoSingleUser}]


main = ScirepoSingleUser.launch_instance


def set_up(*argv: str):
    """The server set up by `main()` with `argv`, up to the point where it would serve,
    and not serving: for the records made when the image is built and for its tests.
    `sys.argv` is the server's while it is set up, and the caller's again afterwards."""
    from jupyter_server.serverapp import ServerApp

    found = []

    def stop(self):
        found.append(self)
        raise SystemExit(0)

    start_ioloop, caller_argv = ServerApp.start_ioloop, sys.argv
    ServerApp.start_ioloop = stop
    sys.argv = ["scirepo-singleuser", *argv]
    try:
        main()
    except SystemExit:
        if not found:
            raise
    finally:
        ServerApp.start_ioloop, sys.argv = start_ioloop, caller_argv
    return found[0]
