"""Backup with restic, `make clean`, a fresh `make up`, restore: the same users with the
same passwords, files, hub state and account requests come back.

This module removes the local host and brings up a new one (about 4 minutes); the tests
after it find a freshly deployed host with the restored users.
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from scirepo import backup, deploy, registry

from .conftest import LOCAL, on_host, scirepo_cli, ssh_client, ssh_run

pytestmark = pytest.mark.host


def admin_password(cfg) -> tuple[str, str]:
    admin = cfg["users"]["admins"][0]
    text = (deploy.CREDENTIALS / cfg["local"]["container"] / f"admin-{admin}").read_text()
    return admin, text.split("password:", 1)[1].strip()


def test_restore_on_a_clean_host_brings_back_users_passwords_files_and_state(
    cfg, site_path, users, host
):
    name, password, hub = users.logged_in("b")
    marker = secrets.token_hex(8)
    client = ssh_client(cfg, name, password)
    try:
        rc, _, err = ssh_run(client, f"echo {marker} > ~/workspace/result.txt; echo n > ~/notes")
    finally:
        client.close()
    assert rc == 0, err
    email = f"ada-{marker}@uni.example"
    sheet = f"Full name,Email,Institution,Purpose\nAda Backupova,{email},Uni,Thesis work\n"
    on_host(cfg, "sh", "-c", "cat > /root/sheet.csv", input=sheet)
    assert on_host(cfg, "scirepo", "accounts", "import", "/root/sheet.csv").returncode == 0
    admin, admin_pw = admin_password(cfg)
    site_data = f"{cfg['paths']['sites'][cfg['storage']['sites'][0]['name']]}/restore-check.dat"
    on_host(cfg, "sh", "-c", f"echo {marker} > {site_data}")

    made = scirepo_cli("backup", "--site", str(site_path))
    assert made.returncode == 0, made.stderr
    local = backup.BACKUPS / cfg["local"]["container"]
    assert (local / "repo" / "config").exists()
    assert os.stat(local / "password").st_mode & 0o777 == 0o600

    # make clean, then make up: a new host with nothing of the old one. The registry, which
    # stands for one on the network, keeps its images (`--keep-images`): pushing them all
    # again would add about 5 minutes and test nothing of the restore.
    clean = scirepo_cli("local", "clean", "--keep-images", "--site", str(site_path))
    assert clean.returncode == 0, clean.stderr
    assert not (LOCAL / "inventory.json").exists()
    assert any((registry.DIR / "data").iterdir()), "the registry's images went"
    up = scirepo_cli("local", "up", "--site", str(site_path))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert on_host(cfg, "id", name).returncode != 0

    restored = scirepo_cli("restore", "--site", str(site_path))
    assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-3000:]

    client = ssh_client(cfg, name, password)
    try:
        rc, out, _ = ssh_run(
            client, "cat ~/workspace/result.txt ~/notes; stat -c %U ~/workspace/result.txt"
        )
    finally:
        client.close()
    assert out.split() == [marker, "n", name]
    assert on_host(cfg, "cat", site_data).stdout.strip() == marker
    # The hub's database and cookie secret came back: the old API token still works.
    assert hub.api("GET", f"/users/{name}").status_code == 200
    assert users.hub(name).login(password)
    assert users.hub(admin).login(admin_pw)
    listed = json.loads(on_host(cfg, "scirepo", "accounts", "list", "--json").stdout)
    assert email in [r["email"] for r in listed]
    for secret in host.file(cfg["paths"]["secrets"]).listdir():
        assert host.file(f"{cfg['paths']['secrets']}/{secret}").mode == 0o600
