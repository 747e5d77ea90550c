"""A person in a browser: log in to the hub, get JupyterLab, run a cell, see its file over SSH."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, ssh_client, ssh_run

pytestmark = [pytest.mark.host, pytest.mark.browser]
CHROMIUM = Path("/usr/bin/chromium")


def _spki_hash(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key, for Chromium's per-key trust flag."""
    pem = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout", "-in", str(cert)], check=True, capture_output=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pem, check=True, capture_output=True
    ).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: scripts/bootstrap installs it")
    from playwright.sync_api import sync_playwright

    # Trust exactly the host's certificate key (the local CA is checked by the TLS test).
    spki = _spki_hash(REPO / ".scirepo" / "tls" / "server.crt")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--ignore-certificate-errors-spki-list={spki}",
            ],
        )
        yield b
        b.close()


def test_login_jupyterlab_cell_writes_a_file_seen_over_ssh(browser, users, hub_url, cfg):
    name, password = users.add("c")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    shots = REPO / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{hub_url}/hub/login", timeout=60_000)
        page.fill("#username_input", name)
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url(f"**/user/{name}/lab**", timeout=180_000)
        page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
        page.screenshot(path=str(shots / "jupyterlab.png"))
        page.click(".jp-LauncherCard[data-category='Notebook']")
        cell = page.locator(".jp-Notebook .jp-Cell").first
        cell.locator(".cm-content").wait_for(timeout=60_000)
        # The kernel is connected once the status bar says so; a cell run before that can
        # be dropped by JupyterLab, so wait for it rather than for the notebook widget.
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        cell.locator(".cm-content").click()
        page.keyboard.type("open('workspace/from-browser.txt', 'w').write('written in a cell')")
        page.keyboard.press("Shift+Enter")
        cell.locator(".jp-OutputArea-output").wait_for(timeout=60_000)
        assert cell.locator(".jp-OutputArea-output").inner_text().strip() == "17"
        page.screenshot(path=str(shots / "cell.png"))
    finally:
        page.screenshot(path=str(shots / "last.png"))
        page.close()
    client = ssh_client(cfg, name, password)
    try:
        deadline = time.monotonic() + 20
        while True:
            rc, out, _ = ssh_run(
                client,
                "cat ~/workspace/from-browser.txt; echo; stat -c %U ~/workspace/from-browser.txt",
            )
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        client.close()
    assert rc == 0
    assert out.split("\n")[:2] == ["written in a cell", name]
