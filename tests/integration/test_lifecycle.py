"""`make down` stops the host and keeps everything; `make up` brings the same host back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scirepo.dockercli import DOCKER

from .conftest import REPO, on_host, ssh_client, ssh_run

pytestmark = pytest.mark.host


def test_down_then_up_keeps_users_and_files(users, cfg, site_path):
    name, password = users.add("l")
    client = ssh_client(cfg, name, password)
    ssh_run(client, "echo kept > ~/workspace/kept.txt")
    client.close()

    scirepo = [sys.executable, "-m", "scirepo", "local"]
    down = subprocess.run(
        [*scirepo, "down", "--site", str(site_path)], cwd=REPO, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stdout + down.stderr
    state = subprocess.run(
        [DOCKER, "inspect", "-f", "{{.State.Status}}", cfg["local"]["container"]],
        capture_output=True,
        text=True,
    )
    assert state.stdout.strip() == "exited"

    up = subprocess.run(
        [*scirepo, "up", "--site", str(site_path)], cwd=REPO, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
    assert "starting the existing host container" in up.stdout
    client = ssh_client(cfg, name, password)
    rc, out, _ = ssh_run(client, "cat ~/workspace/kept.txt")
    client.close()
    assert (rc, out) == (0, "kept\n")
    assert on_host(cfg, "systemctl", "is-active", "scirepo-hub").stdout.strip() == "active"
