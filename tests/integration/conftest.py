"""Fixtures for tests against the local repository host that `make up` creates.

The session starts with `scirepo local up`: it brings the host up when it is not running and
redeploys the current tree when it is, so the tests always check this tree's deployment.
Users made by tests are real Unix users on the host, removed at the end of the session.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
import testinfra

from scirepo import tls
from scirepo.browser import ARGS, CHROMIUM, MISSING, trust_certificate
from scirepo.dockercli import DOCKER
from scirepo.hubclient import HubUser

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / ".scirepo" / "local"


def scirepo_cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`scirepo ARGS` of this tree, as the operator runs it: (returncode, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "scirepo", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def deploy_local(site_path, *extra: str, health: bool = True) -> subprocess.CompletedProcess:
    """`scirepo deploy` of this tree to the local host; `extra` goes to ansible-playbook."""
    args = ["deploy", "--site", str(site_path), "--inventory", str(LOCAL / "inventory.json")]
    args += [] if health else ["--no-health"]
    return scirepo_cli(*args, *(["--", *extra] if extra else []))


@pytest.fixture(scope="session")
def host(local_host, cfg):
    """testinfra host: the host container, as root (what sudo over SSH is on a real host)."""
    return testinfra.get_host(f"docker://{cfg['local']['container']}")


def on_host(cfg: dict, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER, "exec", "-i", cfg["local"]["container"], *cmd],
        input=input,
        capture_output=True,
        text=True,
    )


def bridge_gateway(cfg: dict) -> str:
    """The address of the engine's default bridge on the host: where the hub's API is
    published for the user servers."""
    res = on_host(
        cfg, "docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "bridge"
    )
    assert res.returncode == 0 and res.stdout.strip(), res.stderr
    return res.stdout.strip()


@pytest.fixture(scope="session")
def hub_url(local_host, cfg) -> str:
    return f"https://localhost:{cfg['local']['https_port']}"


@pytest.fixture(scope="session")
def cafile(local_host) -> str:
    return str(tls.CA_CERT)


class Users:
    """Makes real platform users on the host with `scirepo user add`, and removes them."""

    def __init__(self, cfg: dict, hub_url: str, cafile: str):
        self.cfg, self.hub_url, self.cafile, self.made = cfg, hub_url, cafile, []

    def add(self, prefix: str = "t") -> tuple[str, str]:
        name = f"{prefix}{secrets.token_hex(3)}"
        pwfile = f"{self.cfg['paths']['secrets']}/test-password-{name}"
        res = on_host(
            self.cfg,
            "scirepo",
            "user",
            "add",
            name,
            "--name",
            f"Test {name}",
            "--email",
            f"{name}@example.org",
            "--password-file",
            pwfile,
        )
        assert res.returncode == 0, res.stderr
        self.made.append(name)
        password = on_host(self.cfg, "cat", pwfile).stdout
        on_host(self.cfg, "rm", "-f", pwfile)
        return name, _parse_password(password)

    def hub(self, name: str) -> HubUser:
        return HubUser(self.hub_url, name, cafile=self.cafile)

    def logged_in(self, prefix: str = "t") -> tuple[str, str, HubUser]:
        """A new user, logged in to the hub: (name, password, client)."""
        name, password = self.add(prefix)
        hub = self.hub(name)
        assert hub.login(password)
        return name, password, hub

    def cleanup(self) -> None:
        for name in self.made:
            on_host(self.cfg, "docker", "rm", "-f", f"jupyter-{name}")
            on_host(self.cfg, "userdel", "-r", name)
            on_host(self.cfg, "groupdel", name)
            for area in ("workspaces", "public", "scratch"):
                on_host(self.cfg, "rm", "-rf", f"{self.cfg['paths'][area]}/{name}")


def _parse_password(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("password:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no password line in {text!r}")


@pytest.fixture(scope="session")
def users(local_host, cfg, hub_url, cafile):
    made = Users(cfg, hub_url, cafile)
    yield made
    made.cleanup()


def ssh_client(cfg: dict, user: str, password: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - local test host
    client.connect(
        "127.0.0.1",
        port=cfg["local"]["ssh_port"],
        username=user,
        password=password,
        allow_agent=False,
        look_for_keys=False,
        timeout=20,
        auth_timeout=20,
    )
    return client


def ssh_run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=60)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def changed_tasks(output: str) -> list[str]:
    """'TASK name: changed line' for every task an ansible-playbook run reported changed."""
    task, out = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].split("]", 1)[0]
        elif line.startswith("changed:"):
            out.append(f"{task}: {line}")
    return out


def ansible_recap(output: str) -> dict:
    """The PLAY RECAP counters of an ansible-playbook run, per host."""
    recap, seen = {}, False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            seen = True
            continue
        if seen and ":" in line and "ok=" in line:
            host, rest = line.split(":", 1)
            recap[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in rest.split())}
    return recap


# --------------------------------------------------------------------------- browser

SHOTS = REPO / "build" / "screenshots"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(MISSING)
    from playwright.sync_api import sync_playwright

    # Trust exactly the host's certificate key (the local CA is checked by the TLS test).
    trust = trust_certificate(REPO / ".scirepo" / "tls" / "server.crt")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=[*ARGS, trust])
        yield b
        b.close()
