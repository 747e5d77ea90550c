"""`scirepo health` against the local host: every check passes on a working deploy, and a
stopped sshd is named (exit 1) while the other checks still run and the throwaway user is
removed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from scirepo import health, tls

from .conftest import REPO, on_host

pytestmark = pytest.mark.host


def scirepo_health(site_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scirepo", "health", "--site", str(site_path), "--json", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_gone(cfg: dict, name: str) -> None:
    """Nothing of throwaway user `name` is left on the host."""
    assert name.startswith(health.PREFIX)
    assert on_host(cfg, "id", "-u", name).returncode != 0
    assert on_host(cfg, "getent", "group", name).returncode != 0
    for path in (f"{cfg['users']['home_root']}/{name}", f"{cfg['paths']['workspaces']}/{name}"):
        assert on_host(cfg, "test", "-e", path).returncode != 0, path
    names = on_host(cfg, "docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in names if n.startswith(f"jupyter-{name}")]


def statuses(data: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in data["checks"]}


def test_every_check_passes_on_the_deployed_host(local_host, site_path, cfg):
    t0 = time.monotonic()
    res = scirepo_health(site_path)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert [c["name"] for c in data["checks"]] == list(health.CHECKS)
    expected = {name: "ok" for name in health.CHECKS}
    if not cfg["accounts"]["enabled"]:
        expected["signup"] = "skipped"
    assert statuses(data) == expected, data
    assert data["ok"] is True and data["failed"] == []
    assert_gone(cfg, data["user"])
    print(f"health run: {seconds:.1f} s wall, checks {data['seconds']:.1f} s")


@pytest.fixture
def sshd_stopped(local_host, cfg):
    """sshd stopped on the host for the length of a test, started again afterwards."""
    assert on_host(cfg, "systemctl", "stop", "ssh").returncode == 0
    try:
        yield
    finally:
        res = on_host(cfg, "systemctl", "start", "ssh")
        assert res.returncode == 0, res.stderr


def test_a_stopped_sshd_is_named_and_the_user_is_still_removed(
    sshd_stopped, site_path, cfg, tmp_path
):
    # The deploy's own access is SSH too: reach the host through Docker for this test, as an
    # inventory with ansible_connection=docker would, and point the checks at the local ports.
    inv = tmp_path / "inventory.json"
    container = cfg["local"]["container"]
    inv.write_text(json.dumps({"all": {"hosts": {container: {"ansible_connection": "docker"}}}}))
    res = scirepo_health(
        site_path,
        "-i",
        str(inv),
        "--url",
        f"https://localhost:{cfg['local']['https_port']}",
        "--ssh",
        f"127.0.0.1:{cfg['local']['ssh_port']}",
        "--cafile",
        str(tls.CA_CERT),
    )
    assert res.returncode == 1, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["failed"] == ["ssh"], data
    got = statuses(data)
    assert got.pop("ssh") == "FAILED"
    print("ssh:", next(c["detail"] for c in data["checks"] if c["name"] == "ssh"))
    assert set(got.values()) <= {"ok"} | ({"skipped"} if not cfg["accounts"]["enabled"] else set())
    assert "health check failed: ssh" in res.stderr
    assert_gone(cfg, data["user"])


def test_config_errors_exit_2(local_host, site_path, tmp_path):
    res = scirepo_health(site_path, "-i", str(tmp_path / "missing.yml"))
    assert res.returncode == 2 and "no inventory" in res.stderr
