"""Tests of scirepo-authd and the PAM binding against real PAM and real Unix accounts.

Needs root (useradd, /etc/pam.d, /etc/shadow) and libpam; skipped otherwise. The module
creates throwaway accounts and a group named `srt<random>...`, a PAM service file
/etc/pam.d/srt<random> (a copy of the one the Ansible role installs) and runs the daemon as
a subprocess on a socket in a temporary directory; finalizers remove all of it.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scirepo import authd, pam

REPO = Path(__file__).resolve().parents[2]
PAM_FILE = REPO / "ansible/roles/authd/files/pam-scirepo"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, /etc/shadow)"),
    pytest.mark.skipif(not pam.available(), reason="libpam not available"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd not available"),
]


def run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def wait_for_socket(path: str, proc: subprocess.Popen, deadline: float = 15.0) -> None:
    """Until `path` accepts connections, with backoff; fail early if the daemon died."""
    end = time.monotonic() + deadline
    pause = 0.02
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"authd exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                pass
        if time.monotonic() > end:
            raise TimeoutError(f"authd did not listen on {path} within {deadline} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


class Env:
    """What the module fixture set up: names, passwords, socket, log file."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.service = tag
        self.group = f"{tag}g"
        self.member = f"{tag}m"
        self.outsider = f"{tag}o"
        self.expired = f"{tag}x"
        self.passwords = {
            name: secrets.token_urlsafe(12) for name in (self.member, self.outsider, self.expired)
        }
        self.socket = ""
        self.log = Path()

    def ask(self, request: dict, timeout: float = 15.0) -> dict:
        return authd.query(self.socket, request, timeout)

    def auth(self, username: str, password: str) -> dict:
        return self.ask({"op": "authenticate", "username": username, "password": password})


@pytest.fixture(scope="module")
def env(request, tmp_path_factory) -> Env:
    e = Env("srt" + secrets.token_hex(3))
    tmp = tmp_path_factory.mktemp("authd")
    pam_service = Path("/etc/pam.d") / e.service

    def cleanup() -> None:
        for user in (e.member, e.outsider, e.expired):
            subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", e.group], capture_output=True)
        pam_service.unlink(missing_ok=True)

    request.addfinalizer(cleanup)
    run("groupadd", e.group)
    for user in (e.member, e.outsider, e.expired):
        extra = [] if user == e.outsider else ["-G", e.group]
        run("useradd", "-M", "-s", "/usr/sbin/nologin", *extra, user)
    run("chpasswd", stdin="".join(f"{u}:{p}\n" for u, p in e.passwords.items()))
    run("chage", "-d", "0", e.expired)
    shutil.copyfile(PAM_FILE, pam_service)

    config = tmp / "site.json"
    site = {"site": {"name": "authd test"}, "users": {"group": e.group}}
    config.write_text(json.dumps({"scirepo": site}))
    e.socket = str(tmp / "run" / "authd.sock")
    e.log = tmp / "authd.log"
    with e.log.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scirepo.authd", "--config", str(config), "serve"]
            + ["--socket", e.socket, "--pam-service", e.service],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=log,
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    request.addfinalizer(stop)
    wait_for_socket(e.socket, proc)
    return e


def raw_exchange(path: str, payload: bytes, answers: int) -> list[dict]:
    """Send raw bytes on one connection and read `answers` lines back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        while data.count(b"\n") < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


# --------------------------------------------------------------------------- the PAM binding


def test_pam_binding_accepts_the_right_password(env):
    result = pam.authenticate(env.member, env.passwords[env.member], env.service)
    assert result.ok and not result.password_expired
    assert result.code == pam.PAM_SUCCESS


def test_pam_binding_refuses_a_wrong_password(env):
    result = pam.authenticate(env.member, "wrong" + env.passwords[env.member], env.service)
    assert not result.ok
    assert result.step == "pam_authenticate"
    assert result.code == pam.PAM_AUTH_ERR


def test_pam_binding_reports_an_expired_password(env):
    result = pam.authenticate(env.expired, env.passwords[env.expired], env.service)
    assert result.ok and result.password_expired
    assert result.code == pam.PAM_NEW_AUTHTOK_REQD


def test_pam_binding_refuses_nul_bytes(env):
    assert not pam.authenticate(env.member, env.passwords[env.member] + "\0x", env.service).ok


# --------------------------------------------------------------------------- the daemon


def test_the_socket_is_0660(env):
    mode = os.stat(env.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_right_password_gives_the_account(env):
    answer = env.auth(env.member, env.passwords[env.member])
    pw = pwd.getpwnam(env.member)
    assert answer["ok"] is True
    assert answer["password_expired"] is False
    user = answer["user"]
    assert (user["name"], user["uid"], user["gid"]) == (env.member, pw.pw_uid, pw.pw_gid)
    assert (user["home"], user["shell"]) == (pw.pw_dir, pw.pw_shell)
    assert env.group in user["groups"]
    assert grp.getgrnam(env.group).gr_gid in user["group_ids"]
    assert pw.pw_gid in user["group_ids"]
    assert len(user["groups"]) == len(user["group_ids"])


def test_wrong_password_fails_after_the_delay(env):
    started = time.monotonic()
    answer = env.auth(env.member, "not-" + env.passwords[env.member])
    elapsed = time.monotonic() - started
    assert answer == {"ok": False, "error": authd.AUTH_FAILED}
    assert elapsed >= authd.FAIL_DELAY * 0.95


def test_unknown_user_looks_like_a_wrong_password(env):
    started = time.monotonic()
    answer = env.auth(env.tag + "nobody", "whatever")
    assert answer == {"ok": False, "error": authd.AUTH_FAILED}
    assert time.monotonic() - started >= authd.FAIL_DELAY * 0.95


def test_non_member_is_refused_even_with_the_right_password(env):
    answer = env.auth(env.outsider, env.passwords[env.outsider])
    assert answer == {"ok": False, "error": authd.AUTH_FAILED}


def test_expired_password_is_accepted_and_flagged(env):
    answer = env.auth(env.expired, env.passwords[env.expired])
    assert answer["ok"] is True
    assert answer["password_expired"] is True
    assert answer["user"]["name"] == env.expired


@pytest.mark.parametrize("password", ["", "x" * (authd.MAX_PASSWORD + 1)])
def test_empty_or_huge_password_is_refused(env, password):
    assert env.auth(env.member, password) == {"ok": False, "error": authd.AUTH_FAILED}


def test_lookup_needs_no_password(env):
    answer = env.ask({"op": "lookup", "username": env.member})
    assert answer["ok"] is True
    assert answer["user"] == env.auth(env.member, env.passwords[env.member])["user"]


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("outsider", "not a member of {group}"),
        ("unknown", "no such user"),
        ("invalid", "invalid username"),
    ],
)
def test_lookup_refuses(env, who, error):
    name = {"outsider": env.outsider, "unknown": env.tag + "nobody", "invalid": "../etc"}[who]
    answer = env.ask({"op": "lookup", "username": name})
    assert answer == {"ok": False, "error": error.format(group=env.group)}


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "lookup"}\n', "username must be a string"),
        (b'{"op": "authenticate", "username": "x"}\n', "password must be a string"),
        (b'{"op": "delete", "username": "x"}\n', "unknown op"),
        (b"\xff\xfe\n", "not JSON"),
    ],
)
def test_bad_request_gets_an_error_and_the_connection_goes_on(env, payload, error):
    good = json.dumps({"op": "lookup", "username": env.member}).encode() + b"\n"
    first, second = raw_exchange(env.socket, payload + good, 2)
    assert first["ok"] is False and error in first["error"]
    assert second["ok"] is True


def test_oversized_line_gets_an_error_and_the_connection_goes_on(env):
    huge = b'{"op": "lookup", "username": "' + b"a" * (authd.MAX_LINE * 2) + b'"}\n'
    good = json.dumps({"op": "lookup", "username": env.member}).encode() + b"\n"
    first, second = raw_exchange(env.socket, huge + good, 2)
    assert first == {"ok": False, "error": f"request longer than {authd.MAX_LINE} bytes"}
    assert second["ok"] is True


def test_last_line_without_newline_is_answered(env):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(env.socket)
        sock.sendall(json.dumps({"op": "lookup", "username": env.member}).encode())
        sock.shutdown(socket.SHUT_WR)
        assert json.loads(sock.recv(65536))["ok"] is True


def test_client_hanging_up_mid_request_does_not_hurt(env):
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(env.socket)
            sock.sendall(b'{"op": "authenticate", "username": "x", "password": "y"}\n{"op"')
    assert env.ask({"op": "lookup", "username": env.member})["ok"] is True


def test_failure_delays_do_not_block_other_requests(env):
    async def scenario() -> tuple[list[dict], float]:
        wrong = {"op": "authenticate", "username": env.member, "password": "wrong"}
        failures = [asyncio.create_task(authd.aquery(env.socket, wrong)) for _ in range(6)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        ok = await authd.aquery(env.socket, {"op": "lookup", "username": env.member})
        lookup_time = time.monotonic() - started
        return [ok, *await asyncio.gather(*failures)], lookup_time

    answers, lookup_time = asyncio.run(scenario())
    assert answers[0]["ok"] is True
    assert lookup_time < authd.FAIL_DELAY / 2
    assert all(a == {"ok": False, "error": authd.AUTH_FAILED} for a in answers[1:])


def test_client_raises_authd_error_without_daemon(tmp_path):
    with pytest.raises(authd.AuthdError):
        authd.query(str(tmp_path / "none.sock"), {"op": "lookup", "username": "x"}, 2)
    with pytest.raises(authd.AuthdError):
        asyncio.run(authd.aquery(str(tmp_path / "none.sock"), {"op": "lookup"}, 2))


@pytest.mark.parametrize(("which", "code"), [("right", 0), ("wrong", 1)])
def test_cli_check_reads_the_password_from_stdin(env, which, code):
    password = env.passwords[env.member] + ("" if which == "right" else "-nope")
    proc = subprocess.run(
        [sys.executable, "-m", "scirepo.authd", "check", env.member, "--socket", env.socket],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert proc.returncode == code, proc.stderr
    assert json.loads(proc.stdout)["ok"] is (code == 0)


def test_cli_check_lookup(env):
    proc = subprocess.run(
        [sys.executable, "-m", "scirepo.authd", "check", "--lookup", env.member]
        + ["--socket", env.socket],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["user"]["name"] == env.member


def test_log_names_users_but_never_passwords(env):
    # Make sure the log has seen every password, right and wrong, whatever ran before.
    for user, password in env.passwords.items():
        env.auth(user, password)
        env.auth(user, password + "-wrong")
    log = env.log.read_text()
    assert f"authenticate '{env.member}' ok" in log
    assert f"authenticate '{env.member}' failed" in log
    for password in env.passwords.values():
        assert password not in log
