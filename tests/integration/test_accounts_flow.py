"""Accounts on the local host: the signup form through nginx, admin review through the hub's
login, the welcome mail delivered over SMTP to the local mail catcher, the forced password
change over SSH and at the hub, and bad input that creates nothing."""

from __future__ import annotations

import json
import re
import secrets
import string
import time

import paramiko
import pytest
import requests

from scirepo import deploy, mailcatcher

from .conftest import SHOTS, on_host, ssh_client, ssh_run
from .test_browser import open_lab

pytestmark = [pytest.mark.host]


def surname() -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(7)).capitalize()


def requests_on_host(cfg) -> list[dict]:
    res = on_host(cfg, "scirepo", "accounts", "list", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def wait_for_mail(to: str, kind: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in mailcatcher.messages():
            if msg["To"] == to and msg["X-Scirepo-Mail"].startswith(kind):
                return msg
        time.sleep(0.2)
    raise AssertionError(f"no {kind} mail to {to} within {timeout} s")


def mail_field(msg, label: str) -> str:
    body = msg.get_payload(decode=True).decode()
    return next(line.split(":", 1)[1].strip() for line in body.splitlines()
                if line.strip().startswith(label + ":"))  # fmt: skip


def admin_credentials(cfg) -> tuple[str, str]:
    admin = cfg["users"]["admins"][0]
    text = (deploy.CREDENTIALS / cfg["local"]["container"] / f"admin-{admin}").read_text()
    return admin, next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                       if ln.startswith("password:"))  # fmt: skip


@pytest.fixture
def fresh_limits(cfg, local_host):
    """The per-client rate limit lives in the service's memory; all test requests come from
    the same address, so each test starts with a restarted service."""
    assert on_host(cfg, "systemctl", "restart", "scirepo-accounts").returncode == 0
    health = f"http://127.0.0.1:{cfg['accounts']['port']}/accounts/health"
    probe = f"import urllib.request; urllib.request.urlopen({health!r}, timeout=2)"
    deadline = time.monotonic() + 20
    while on_host(cfg, "python3", "-c", probe).returncode:
        assert time.monotonic() < deadline, "the accounts service did not come back"
        time.sleep(0.2)


class Verified(requests.Session):
    """A session that checks the host against the local CA on every call (requests lets
    REQUESTS_CA_BUNDLE from the environment override a session's own `verify`)."""

    def __init__(self, cafile: str) -> None:
        super().__init__()
        self.cafile = cafile

    def request(self, *args, **kwargs):
        kwargs.setdefault("verify", self.cafile)
        return super().request(*args, **kwargs)


@pytest.fixture
def session(cafile):
    return Verified(cafile)


def signup_form(session, hub_url) -> str:
    page = session.get(f"{hub_url}/accounts/", timeout=10)
    assert page.status_code == 200
    return re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)


def valid_fields(**over) -> dict:
    return {
        "full_name": f"Zoë {surname()}",
        "email": f"{secrets.token_hex(4)}@uni.example",
        "institution": "Institut de Physique",
        "purpose": "Waveform analysis for my thesis on station A.",
        "policy": "on",
        **over,
    }


def change_expired_password_over_ssh(cfg, user: str, old: str, new: str) -> str:
    """Log in with the temporary password: sshd runs passwd first. Returns what it said."""
    client = ssh_client(cfg, user, old)
    chan = client.invoke_shell()
    chan.settimeout(20)
    seen = ""
    for prompt, answer in (("Current password:", old), ("New password:", new),
                           ("Retype new password:", new)):  # fmt: skip
        while prompt not in seen:
            seen += chan.recv(4096).decode(errors="replace")
        seen = seen.split(prompt, 1)[1]
        chan.send(answer + "\n")
    transcript = seen
    try:
        while chunk := chan.recv(4096):
            transcript += chunk.decode(errors="replace")
    except TimeoutError:
        pass
    client.close()
    return transcript


@pytest.mark.browser
def test_signup_approve_mail_ssh_change_then_jupyterlab(
    browser,
    cfg,
    hub_url,
    fresh_limits,
    users,  # noqa: F811
):
    fields = valid_fields()
    SHOTS.mkdir(parents=True, exist_ok=True)
    applicant = browser.new_page()
    try:
        applicant.goto(f"{hub_url}/accounts/", timeout=30_000)
        for name in ("full_name", "email", "institution", "purpose"):
            applicant.fill(f"#{name}", fields[name])
        applicant.check("#policy")
        applicant.click("#submit")
        applicant.wait_for_selector("#received", timeout=15_000)
        rid = applicant.inner_text("#request-id")
        applicant.screenshot(path=str(SHOTS / "signup-received.png"))
    finally:
        applicant.close()
    assert "received" in wait_for_mail(fields["email"], "acknowledgement")["Subject"]
    wait_for_mail(cfg["site"]["contact_email"], "admin-notice")

    # The admin logs in through the hub (no second password) and approves.
    admin, admin_password = admin_credentials(cfg)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{hub_url}/accounts/admin", timeout=30_000)
        page.wait_for_url("**/hub/login**", timeout=30_000)
        page.fill("#username_input", admin)
        page.fill("#password_input", admin_password)
        page.click("#login_submit")
        page.wait_for_url("**/accounts/admin", timeout=30_000)
        form = page.locator(f"#request-{rid}")
        assert fields["full_name"] in form.inner_text()
        page.screenshot(path=str(SHOTS / "accounts-admin.png"))
        form.locator("button.approve").click()
        page.wait_for_selector("#note", timeout=15_000)
        assert f"Request {rid} approved" in page.inner_text("#note")
    finally:
        context.close()

    welcome = wait_for_mail(fields["email"], "welcome")
    username, temporary = mail_field(welcome, "Username"), mail_field(welcome, "Temporary password")
    users.made.append(username)  # removed with the test users
    assert username == "z" + fields["full_name"].split()[1].lower()

    new = f"Neue-{secrets.token_urlsafe(9)}"
    said = change_expired_password_over_ssh(cfg, username, temporary, new)
    assert "updated successfully" in said, said
    client = ssh_client(cfg, username, new)
    try:
        rc, out, _ = ssh_run(client, "id -un; readlink ~/workspace")
    finally:
        client.close()
    assert rc == 0 and out.split() == [username, f"{cfg['paths']['workspaces']}/{username}"]
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(cfg, username, temporary)

    lab = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        open_lab(lab, hub_url, username, new)
        lab.screenshot(path=str(SHOTS / "accounts-jupyterlab.png"))
    finally:
        lab.close()


def test_hub_login_with_the_temporary_password_goes_to_the_change_page(
    cfg, hub_url, session, fresh_limits, users
):
    fields = valid_fields()
    session.post(f"{hub_url}/accounts/", data={**fields, "_xsrf": signup_form(session, hub_url)})
    rid = next(r["id"] for r in requests_on_host(cfg) if r["email"] == fields["email"])
    res = on_host(cfg, "scirepo", "accounts", "approve", str(rid))
    assert res.returncode == 0, res.stderr
    welcome = wait_for_mail(fields["email"], "welcome")
    username, temporary = mail_field(welcome, "Username"), mail_field(welcome, "Temporary password")
    users.made.append(username)

    hub = users.hub(username)
    login = hub.session.get(f"{hub_url}/hub/login", timeout=10, verify=hub.cafile)
    xsrf = hub.session.cookies.get("_xsrf")
    res = hub.session.post(
        f"{hub_url}/hub/login",
        data={"username": username, "password": temporary, "_xsrf": xsrf},
        allow_redirects=False, timeout=30, verify=hub.cafile,
    )  # fmt: skip
    assert login.status_code == 200
    assert res.status_code == 302
    assert res.headers["Location"].startswith(f"/accounts/password?user={username}&expired=1")
    assert not hub.login(temporary)  # no hub session with a temporary password

    page = session.get(f"{hub_url}{res.headers['Location']}", timeout=10)
    assert 'id="expired"' in page.text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    new = f"Nouveau-{secrets.token_urlsafe(9)}"
    weak = session.post(f"{hub_url}/accounts/password", data={
        "_xsrf": xsrf, "username": username, "current": temporary, "new": "short",
        "repeat": "short"}, timeout=30)  # fmt: skip
    assert weak.status_code == 400 and "too short" in weak.text
    done = session.post(f"{hub_url}/accounts/password", data={
        "_xsrf": xsrf, "username": username, "current": temporary, "new": new,
        "repeat": new}, timeout=30)  # fmt: skip
    assert done.status_code == 200 and "Password changed" in done.text
    assert users.hub(username).login(new)
    client = ssh_client(cfg, username, new)  # no forced change any more
    try:
        assert ssh_run(client, "id -un")[1].strip() == username
    finally:
        client.close()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("full_name", "N" * 300, "Full name is too long"),
        ("full_name", "Bobby'); DROP TABLE requests;--", "Full name"),
        ("email", "$(reboot)@example.org", "Email"),
        ("ssh_key", "ssh-ed25519 AAAA-this-is-not-a-key", "SSH"),
        ("institution", "x" * 300, "Institution is too long"),
    ],
)
def test_bad_form_input_is_named_and_creates_nothing(
    cfg, hub_url, session, fresh_limits, field, value, message
):
    before = requests_on_host(cfg)
    fields = valid_fields(**{field: value})
    res = session.post(
        f"{hub_url}/accounts/", data={**fields, "_xsrf": signup_form(session, hub_url)}, timeout=30
    )
    assert res.status_code == 400
    assert f'id="error-{field}"' in res.text and message in res.text
    assert requests_on_host(cfg) == before


def test_form_without_csrf_token_is_refused(cfg, hub_url, session, fresh_limits):
    before = requests_on_host(cfg)
    signup_form(session, hub_url)  # has the _xsrf cookie, but the replayed body lacks the field
    res = session.post(f"{hub_url}/accounts/", data=valid_fields(), timeout=30)
    assert res.status_code == 403 and "CSRF" in res.text
    fresh = Verified(session.cafile).post(f"{hub_url}/accounts/", data=valid_fields(), timeout=30)
    assert fresh.status_code == 403
    assert requests_on_host(cfg) == before


def test_honeypot_and_rate_limit(cfg, hub_url, session, fresh_limits):
    before = requests_on_host(cfg)
    trap = session.post(f"{hub_url}/accounts/", data={
        **valid_fields(), "website": "http://spam.example", "_xsrf": signup_form(session, hub_url)
    }, timeout=30)  # fmt: skip
    assert trap.status_code == 200 and "Request received" in trap.text
    assert requests_on_host(cfg) == before
    codes = []  # the honeypot submission counted as one
    for _ in range(cfg["accounts"]["rate_limit"]):
        res = session.post(f"{hub_url}/accounts/", data={
            **valid_fields(full_name="N" * 300), "_xsrf": signup_form(session, hub_url)
        }, timeout=30)  # fmt: skip
        codes.append(res.status_code)
    assert codes == [400] * (cfg["accounts"]["rate_limit"] - 1) + [429]
    assert "Too many" in res.text


def test_service_state_on_the_host(host, cfg):
    assert host.service("scirepo-accounts").is_running
    assert host.service("scirepo-accounts").is_enabled
    state = host.file(f"{cfg['paths']['state']}/accounts")
    assert state.mode == 0o700 and state.user == "root"
    db = host.file(f"{cfg['paths']['state']}/accounts/accounts.db")
    assert db.mode == 0o600
    for secret in ("accounts_hub_token", "accounts_cookie_secret"):
        assert host.file(f"{cfg['paths']['secrets']}/{secret}").mode == 0o600
    listening = host.socket(f"tcp://127.0.0.1:{cfg['accounts']['port']}")
    assert listening.is_listening
    assert not host.socket(f"tcp://0.0.0.0:{cfg['accounts']['port']}").is_listening


def test_disable_stops_the_server_and_locks_ssh_and_hub_enable_restores(cfg, users, host):
    name, password, hub = users.logged_in("d")
    hub.start_server()
    container = f"jupyter-{name}"
    assert host.docker(container).is_running
    hub.put_file("workspace/kept.txt", "still here")

    res = on_host(cfg, "scirepo", "accounts", "disable", name)
    assert res.returncode == 0, res.stderr
    assert "disabled" in res.stdout
    assert container not in host.check_output("docker ps --format '{{.Names}}'").split()
    assert not users.hub(name).login(password)
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(cfg, name, password)
    assert host.file(f"{cfg['paths']['workspaces']}/{name}/kept.txt").exists  # data kept
    # The old hub session is gone with the hub's record of the user.
    assert hub.api("GET", f"/users/{name}").status_code in (401, 403, 404)

    res = on_host(cfg, "scirepo", "accounts", "enable", name)
    assert res.returncode == 0, res.stderr
    client = ssh_client(cfg, name, password)
    try:
        assert ssh_run(client, "cat ~/workspace/kept.txt")[1] == "still here"
    finally:
        client.close()
    assert users.hub(name).login(password)
