"""A small client of a scirepo hub, as a user sees it: log in, start a server, use it.

Used by the integration tests (and by health checks and benchmarks): it goes through the
same HTTPS endpoint, login form and proxy that a person's browser does.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket


class HubError(RuntimeError):
    """The hub or the user's server answered something unexpected."""


@dataclass
class HubUser:
    """A logged-in user of the hub at `url` (for example https://localhost:8443)."""

    url: str
    name: str
    cafile: str | bool = True
    session: requests.Session = field(default_factory=requests.Session)
    token: str = ""

    def __post_init__(self):
        # `verify` is passed on every call: requests lets REQUESTS_CA_BUNDLE from the
        # environment override a session's own setting.
        self.url = self.url.rstrip("/")

    # -- login ------------------------------------------------------------------------
    def login(self, password: str) -> bool:
        """Submit the login form; True when the hub accepted the password."""
        page = self.session.get(f"{self.url}/hub/login", timeout=30, verify=self.cafile)
        page.raise_for_status()
        xsrf = self.session.cookies.get("_xsrf", path="/hub/") or ""
        res = self.session.post(
            f"{self.url}/hub/login?next=",
            timeout=60,
            allow_redirects=False,
            verify=self.cafile,
            data={"username": self.name, "password": password, "_xsrf": xsrf},
        )
        ok = res.status_code in (302, 303) and "jupyterhub-session-id" in self.session.cookies
        if ok and not self.token:
            self.token = self._new_token()
        return ok and res.status_code != 403

    def _new_token(self) -> str:
        xsrf = self.session.cookies.get("_xsrf", path="/hub/") or ""
        res = self.session.post(
            f"{self.url}/hub/api/users/{self.name}/tokens",
            timeout=30,
            verify=self.cafile,
            headers={"X-XSRFToken": xsrf, "Referer": f"{self.url}/hub/"},
            json={"note": "scirepo hubclient", "expires_in": 3600},
        )
        if res.status_code != 201:
            raise HubError(f"token request: {res.status_code} {res.text[:300]}")
        return res.json()["token"]

    def _call(self, method: str, url: str, timeout: float = 60, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(
            method, url, headers=headers, verify=self.cafile, timeout=timeout, **kw
        )

    def api(self, method: str, path: str, **kw) -> requests.Response:
        """Call the hub REST API (path below /hub/api) with the user's token."""
        return self._call(method, f"{self.url}/hub/api{path}", **kw)

    # -- server -----------------------------------------------------------------------
    def _server_api(self, server_name: str) -> str:
        return f"/users/{self.name}/servers/{server_name}" if server_name else (
            f"/users/{self.name}/server")  # fmt: skip

    def start_server(
        self,
        deadline: float = 180,
        image: str | None = None,
        server_name: str = "",
        progress: bool = False,
    ) -> float:
        """Start a server (the default one, or a named one) and wait until it answers
        through the proxy; `image` is a stack name of the site config.

        With `progress` the hub's progress event stream says when the server is ready
        (what the spawn page listens to): no polling, so the time is exact to a few
        milliseconds and many users waiting at once do not load the hub (benchmarks).

        Returns the seconds from the request to the first answer of the server.
        """
        t0 = time.monotonic()
        body = {"image": image} if image else None
        res = self.api("POST", self._server_api(server_name), json=body)
        if res.status_code not in (201, 202):
            raise HubError(f"start: {res.status_code} {res.text[:300]}")
        if progress:
            self._wait_progress(server_name, t0 + deadline)
            return self._wait_answer(server_name, t0, t0 + deadline)
        delay = 0.2
        while time.monotonic() - t0 < deadline:
            info = self.api("GET", f"/users/{self.name}").json()
            server = info.get("servers", {}).get(server_name, {})
            if server.get("ready"):
                if self.server("GET", "api/status", server_name=server_name).status_code == 200:
                    return time.monotonic() - t0
            elif not server.get("pending") and time.monotonic() - t0 > 5:
                raise HubError(f"server {server_name!r} of {self.name} failed to start: {info}")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        raise HubError(f"server {server_name!r} of {self.name} not ready after {deadline} s")

    def _wait_progress(self, server_name: str, until: float) -> None:
        """Read the hub's progress events of a starting server until it is ready."""
        path = self._server_api(server_name) + "/progress"
        with self._call(
            "GET",
            f"{self.url}/hub/api{path}",
            stream=True,
            timeout=max(until - time.monotonic(), 1),
        ) as res:
            if res.status_code != 200:
                raise HubError(f"progress: {res.status_code} {res.text[:300]}")
            for line in res.iter_lines(decode_unicode=True):
                if time.monotonic() > until:
                    break
                if not line or not line.startswith("data:"):
                    continue  # keepalive blank lines between events
                event = json.loads(line[5:])
                if event.get("ready"):
                    return
                if event.get("failed"):
                    raise HubError(f"server {server_name!r} of {self.name} failed: {event}")
        raise HubError(f"server {server_name!r} of {self.name} not ready in time (progress)")

    def _wait_answer(self, server_name: str, t0: float, until: float) -> float:
        """Seconds from t0 to the server's first answer through the proxy; the proxy route
        exists once the hub says ready, so this is quick, with a short backoff anyway."""
        delay = 0.02
        while True:
            try:
                if self.server("GET", "api/status", server_name=server_name).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            if time.monotonic() > until:
                raise HubError(f"server {server_name!r} of {self.name} ready but not answering")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def stop_server(self, deadline: float = 60, server_name: str = "") -> None:
        self.api("DELETE", self._server_api(server_name))
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            info = self.api("GET", f"/users/{self.name}").json()
            if server_name not in info.get("servers", {}):
                return
            time.sleep(0.5)
        raise HubError(f"server {server_name!r} of {self.name} still there after {deadline} s")

    def server(self, method: str, path: str, server_name: str = "", **kw) -> requests.Response:
        """Call one of the user's servers (path below /user/NAME[/SERVER]/) with the token."""
        return self._call(method, self.url + self._server_path(server_name) + path, **kw)

    def _server_path(self, server_name: str) -> str:
        """`/user/NAME/` or `/user/NAME/SERVER/`: where the proxy routes a server."""
        return f"/user/{self.name}/" + (f"{server_name}/" if server_name else "")

    def put_file(self, path: str, text: str) -> dict:
        res = self.server(
            "PUT", f"api/contents/{path}", json={"type": "file", "format": "text", "content": text}
        )
        if res.status_code not in (200, 201):
            raise HubError(f"PUT {path}: {res.status_code} {res.text[:300]}")
        return res.json()

    def start_kernel(self, server_name: str = "") -> str:
        """Start a Python kernel in a server; return its id."""
        res = self.server("POST", "api/kernels", server_name=server_name, json={"name": "python3"})
        if res.status_code != 201:
            raise HubError(f"kernel start: {res.status_code} {res.text[:300]}")
        return res.json()["id"]

    def run_code(
        self, code: str, timeout: float = 60, server_name: str = "", kernel: str = ""
    ) -> dict:
        """Run `code` in a Python kernel; return {'stdout', 'stderr', 'status'}.

        Without `kernel` a new kernel runs it and is shut down afterwards; with a kernel id
        (`start_kernel`) that kernel runs it and keeps running, with its variables.
        """
        kid = kernel or self.start_kernel(server_name)
        ws_url = self.url.replace("https://", "wss://").replace("http://", "ws://")
        sslopt = {"ca_certs": self.cafile} if isinstance(self.cafile, str) else {}
        ws = websocket.create_connection(
            f"{ws_url}{self._server_path(server_name)}api/kernels/{kid}/channels",
            header=[f"Authorization: token {self.token}"],
            sslopt=sslopt,
            timeout=timeout,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "msg_type": "execute_request",
                            "username": self.name,
                            "session": uuid.uuid4().hex,
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "channel": "shell",
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": False,
                            "user_expressions": {},
                            "allow_stdin": False,
                        },
                    }
                )
            )
            out = {"stdout": "", "stderr": "", "status": None}
            t0 = time.monotonic()
            while out["status"] is None or not out.get("_idle"):
                if time.monotonic() - t0 > timeout:
                    raise HubError(f"code did not finish in {timeout} s: {out}")
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out[content["name"]] += content["text"]
                elif kind == "error":
                    out["stderr"] += "\n".join(content.get("traceback", [])) or content["evalue"]
                elif kind == "execute_reply":
                    out["status"] = content["status"]
                elif kind == "status" and content["execution_state"] == "idle":
                    out["_idle"] = True
            out.pop("_idle", None)
            return out
        finally:
            ws.close()
            if not kernel:
                self.server("DELETE", f"api/kernels/{kid}", server_name=server_name)
