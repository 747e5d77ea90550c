"""Who may use a user's server: scirepo-singleuser (images/base/scirepo-singleuser) against
the real hub, through nginx and the proxy, with real users, tokens and OAuth logins.

The owner gets in with a token or after the hub's OAuth login; another user, an unknown
token or no login at all never does; a login keeps its token in a signed cookie limited to
the server's path; requests that ride on that cookie need the XSRF token; a forged OAuth
state, a foreign `next` and a logout do what they must.
"""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def owner(users):
    name, _, hub = users.logged_in("o")
    hub.start_server()
    yield hub
    hub.stop_server()


@pytest.fixture(scope="module")
def other(users):
    return users.logged_in("x")[2]


def server_url(hub, path: str = "") -> str:
    return f"{hub.url}/user/{hub.name}/{path}"


def get(url: str, hub, session=None, **kw) -> requests.Response:
    return (session or requests).get(url, verify=hub.cafile, timeout=60, **kw)


def browser(hub) -> requests.Session:
    """A new browser holding a copy of `hub`'s cookies (its hub login)."""
    session = requests.Session()
    session.cookies = hub.session.cookies.copy()
    return session


def oauth_login(owner, session, path: str = "lab") -> requests.Response:
    """Open `path` of the owner's server in `session` (a browser with a hub login) and
    follow the redirects: server login -> hub authorize -> oauth_callback -> path."""
    return get(server_url(owner, path), owner, session, allow_redirects=True)


def test_owner_token_opens_the_server_with_the_hubs_headers(owner):
    res = owner.server("GET", "api/status")
    assert res.status_code == 200, res.text
    hub_version = owner.api("GET", "/").json()["version"]
    assert res.headers["X-JupyterHub-Version"] == hub_version
    assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
    assert owner.server("GET", "api/me").json()["identity"]["username"] == owner.name


def test_another_users_token_is_refused(owner, other):
    for kw in (
        {"headers": {"Authorization": f"token {other.token}"}},
        {"params": {"token": other.token}},
    ):
        res = get(server_url(owner, "api/contents"), owner, **kw)
        assert res.status_code == 403, (kw, res.status_code, res.text[:200])


@pytest.mark.parametrize("auth", [None, "token not-a-hub-token", "bearer ", "basic Zm9vOmJhcg=="])
def test_api_without_a_valid_token_is_refused(owner, auth):
    headers = {"Authorization": auth} if auth else {}
    res = get(server_url(owner, "api/contents"), owner, headers=headers, allow_redirects=False)
    assert res.status_code == 403


def test_page_without_login_goes_to_the_hubs_oauth(owner):
    res = get(server_url(owner, "lab"), owner, allow_redirects=False)
    assert res.status_code == 302
    login = urlparse(res.headers["Location"])
    assert login.path == f"/user/{owner.name}/login"
    res = get(owner.url + res.headers["Location"], owner, allow_redirects=False)
    assert res.status_code == 302
    authorize = urlparse(res.headers["Location"])
    assert authorize.path == "/hub/api/oauth2/authorize"
    query = parse_qs(authorize.query)
    assert query["client_id"] == [f"jupyterhub-user-{owner.name}"]
    assert query["redirect_uri"] == [f"/user/{owner.name}/oauth_callback"]
    assert query["code_challenge_method"] == ["S256"] and query["state"][0]
    state_cookie = res.headers["Set-Cookie"]
    assert f"jupyterhub-user-{owner.name}-oauth-state=" in state_cookie
    assert "HttpOnly" in state_cookie and "Secure" in state_cookie
    assert f"Path=/user/{owner.name}/" in state_cookie


def test_oauth_login_keeps_the_token_in_a_path_cookie_and_needs_xsrf(owner):
    session = owner.session  # logged in to the hub
    res = oauth_login(owner, session)
    assert res.status_code == 200 and urlparse(res.url).path == f"/user/{owner.name}/lab"
    cookie = next(c for c in session.cookies if c.name == f"jupyterhub-user-{owner.name}")
    assert cookie.path == f"/user/{owner.name}/" and cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    # The page carries the token for JupyterLab's API calls, and the hub's URLs.
    assert '"hubPrefix": "/hub/"' in res.text and f'"hubUser": "{owner.name}"' in res.text
    # The cookie alone opens the API for reading; a change needs the XSRF token too.
    assert get(server_url(owner, "api/contents"), owner, session).status_code == 200
    body = {"type": "file", "format": "text", "content": "x"}
    url = server_url(owner, "api/contents/xsrf.txt")
    res = session.put(url, json=body, verify=owner.cafile, timeout=60)
    assert res.status_code == 403
    xsrf = session.cookies.get("_xsrf", path=f"/user/{owner.name}/")
    res = session.put(
        url, json=body, headers={"X-XSRFToken": xsrf}, verify=owner.cafile, timeout=60
    )
    assert res.status_code == 201, res.text
    assert owner.server("DELETE", "api/contents/xsrf.txt").status_code == 204


def test_an_xsrf_cookie_planted_by_another_page_does_not_count(owner):
    """Cookie tossing: all servers share one origin, so a page of another user's server can
    set an `_xsrf` cookie on this server's path and send the same value in the header.
    Only the XSRF token tied to the login passes; the next page load restores it."""
    session = browser(owner)
    assert oauth_login(owner, session).status_code == 200
    path = f"/user/{owner.name}/"
    planted = f"2|00000000|{os.urandom(16).hex()}|{int(time.time())}"  # tornado's format
    (own,) = [c for c in session.cookies if c.name == "_xsrf" and c.path == path]
    session.cookies.set("_xsrf", planted, path=path, domain=own.domain)
    # The planted cookie is the only one sent: tornado's own check alone would pass.
    assert [c.value for c in session.cookies if c.name == "_xsrf" and c.path == path] == [planted]
    body = {"type": "file", "format": "text", "content": "x"}
    url = server_url(owner, "api/contents/tossed.txt")
    res = session.put(
        url, json=body, headers={"X-XSRFToken": planted}, verify=owner.cafile, timeout=60
    )
    assert res.status_code == 403
    assert oauth_login(owner, session).status_code == 200  # a page load: the right cookie
    xsrf = session.cookies.get("_xsrf", path=path)
    assert xsrf != planted
    res = session.put(
        url, json=body, headers={"X-XSRFToken": xsrf}, verify=owner.cafile, timeout=60
    )
    assert res.status_code == 201, res.text
    assert owner.server("DELETE", "api/contents/tossed.txt").status_code == 204


def test_another_user_logged_in_to_the_hub_gets_no_cookie_and_a_403(owner, other):
    res = oauth_login(owner, other.session)
    assert res.status_code == 403
    assert not [c for c in other.session.cookies if c.name == f"jupyterhub-user-{owner.name}"]


def test_forged_oauth_state_and_foreign_next_are_refused(owner):
    session = browser(owner)
    # A callback whose state is not the one this browser started.
    res = get(
        server_url(owner, "oauth_callback"), owner, session, params={"code": "c", "state": "forged"}
    )
    assert res.status_code == 403
    # A login asked to go elsewhere afterwards ends on the server itself.
    res = get(server_url(owner, "login"), owner, session, params={"next": "https://evil.example/"})
    assert urlparse(res.url).netloc == urlparse(owner.url).netloc
    assert urlparse(res.url).path.startswith(f"/user/{owner.name}/")


def test_token_in_the_url_of_a_page_is_kept_in_the_cookie(owner):
    session = requests.Session()
    res = get(
        server_url(owner, "lab"),
        owner,
        session,
        params={"token": owner.token},
        headers={"Sec-Fetch-Mode": "navigate"},
    )
    assert res.status_code == 200
    assert get(server_url(owner, "api/contents"), owner, session).status_code == 200


def test_logout_forgets_the_cookie_and_goes_to_the_hubs_logout(owner):
    session = browser(owner)
    assert oauth_login(owner, session).status_code == 200
    assert get(server_url(owner, "api/contents"), owner, session).status_code == 200
    res = get(server_url(owner, "logout"), owner, session, allow_redirects=False)
    assert res.status_code == 302 and urlparse(res.headers["Location"]).path == "/hub/logout"
    assert not [c for c in session.cookies if c.name == f"jupyterhub-user-{owner.name}"]
    res = get(server_url(owner, "api/contents"), owner, session, allow_redirects=False)
    assert res.status_code == 403
