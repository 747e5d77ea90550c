"""Options and session fixtures shared by every test directory.

`local_host` brings the local repository host up with `scirepo local up` (or redeploys the
current tree onto it), so integration and image tests always check this tree's build.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from scirepo import config as siteconfig

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--site",
        default="site.yml",
        type=Path,
        help="site config of the local host the integration tests use",
    )


@pytest.fixture(scope="session")
def site_path(pytestconfig) -> Path:
    path = pytestconfig.getoption("--site")
    if not path.exists():
        path = REPO / "site.example.yml"
    return path


@pytest.fixture(scope="session")
def cfg(site_path) -> dict:
    return siteconfig.resolve(siteconfig.load(site_path))


@pytest.fixture(scope="session")
def local_host(site_path, cfg) -> dict:
    """Bring the local host up (or redeploy it); record how long that took."""
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "scirepo", "local", "up", "--site", str(site_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "up.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        pytest.fail(
            f"scirepo local up failed (log in build/up.log):\n{res.stdout[-4000:]}"
            f"\n{res.stderr[-3000:]}"
        )
    return {"seconds": time.monotonic() - t0, "output": res.stdout}
