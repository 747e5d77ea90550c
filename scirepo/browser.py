"""Headless Chromium as the browser tests and the login bench start it.

Debian's `chromium-headless-shell` (scripts/bootstrap installs it): Chromium's headless
build, the one Playwright itself runs headless. `chromium --headless` runs the whole browser
and draws its hidden UI too (an omnibox popup in a renderer of its own for every new
window), which cost 1.6-2.3 s of CPU per login on the 2-core machines that also run the hub.
"""

from __future__ import annotations

from pathlib import Path

from scirepo import tls

CHROMIUM = Path("/usr/bin/chromium-headless-shell")
MISSING = f"{CHROMIUM} is missing: scripts/bootstrap installs Debian's chromium-headless-shell"
# No sandbox and no /dev/shm (containers, root); nothing the browser would do on its own.
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def trust_certificate(cert: Path) -> str:
    """The flag that makes Chromium trust exactly the key of `cert` (the host's certificate)."""
    return f"--ignore-certificate-errors-spki-list={tls.spki_hash(cert)}"
