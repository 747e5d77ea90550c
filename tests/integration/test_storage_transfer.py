"""The transfer from the upload sandbox to site data on the host: the systemd timer is
armed, and a run of its service moves a user's complete upload, verified and catalogued."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from .conftest import on_host, ssh_client, ssh_run

pytestmark = pytest.mark.host


def test_the_transfer_timer_is_armed(host):
    timer = host.service("scirepo-transfer.timer")
    assert timer.is_enabled and timer.is_running


def test_a_complete_upload_moves_into_site_data_when_the_service_runs(cfg, users, host):
    name, password = users.add("u")
    site = cfg["storage"]["sites"][0]["name"]
    folder = f"run-{secrets.token_hex(4)}"
    payload = secrets.token_hex(5000)
    client = ssh_client(cfg, name, password)
    try:
        upload = f"{cfg['paths']['upload']}/{site}/{folder}"
        rc, _, err = ssh_run(
            client,
            f"mkdir -p {upload} && printf %s {payload} > {upload}/trace.mseed"
            f" && printf %s {payload} > '{upload}/with space.txt' && touch {upload}/.complete",
        )
        assert rc == 0, err
    finally:
        client.close()
    res = on_host(cfg, "systemctl", "start", "scirepo-transfer.service")
    assert res.returncode == 0, (
        res.stderr
        + on_host(cfg, "journalctl", "-u", "scirepo-transfer", "-n", "30", "--no-pager").stdout
    )
    target = f"{cfg['paths']['sites'][site]}/{folder}"
    for file in ("trace.mseed", "with space.txt"):
        moved = host.file(f"{target}/{file}")
        assert moved.exists and moved.user == "root" and moved.mode == 0o444
        assert moved.content_string == payload
    assert not host.file(f"{cfg['paths']['upload']}/{site}/{folder}/trace.mseed").exists
    listed = json.loads(
        on_host(cfg, "scirepo", "storage", "catalog", "--path", f"{folder}/*", "--json").stdout
    )
    assert {(e["uploader"], e["sha256"]) for e in listed} == {
        (name, hashlib.sha256(payload.encode()).hexdigest())
    }
    assert len(listed) == 2
