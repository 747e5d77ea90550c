"""`scirepo deploy`: run the one playbook (ansible/site.yml) against an inventory.

The same function deploys the local host of `make up` and real Debian 12 hosts over SSH.
It hands the playbook three things, all derived from the site config: the resolved config
(build/site.json), the image digests (build/images.json, written by `scirepo images build`)
and the scirepo wheel that the host runs its services from. After a successful playbook
run, `scirepo deploy` checks the host end to end (scirepo/health.py; `--no-health` skips
it) and exits 1 when a check failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scirepo import config as siteconfig
from scirepo import progress, tls

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
# First passwords of the admins, fetched from each host: CREDENTIALS/<host>/admin-<name>.
CREDENTIALS = REPO / ".scirepo" / "credentials"


def build_wheel() -> Path:
    """The scirepo wheel the host installs (no PyPI access is assumed on the host)."""
    dist = BUILD / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("scirepo-*.whl"):
        old.unlink()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (wheel,) = dist.glob("scirepo-*.whl")
    return wheel


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def run(
    site: Path, inventory: Path, credentials_dir: Path | None = None, extra: list[str] | None = None
) -> int:
    """Validate, then run ansible-playbook; returns its exit code."""
    cfg = siteconfig.resolve(siteconfig.load(site))
    images = BUILD / "images.json"
    if not images.exists():
        raise siteconfig.ConfigError(
            [f"{images}: no image digests; run `scirepo images build` first"]
        )
    site_json = BUILD / "site.json"
    site_json.write_text(json.dumps({"scirepo": cfg}, indent=2))
    wheel = build_wheel()
    creds = credentials_dir or CREDENTIALS
    creds.mkdir(parents=True, exist_ok=True, mode=0o700)
    extra_vars = {"base_wheel": str(wheel), "scirepo_credentials_dir": str(creds)}
    if not cfg["tls"]["certificate"]:
        # No certificate in the site config: the operator's local CA signs one.
        tls.ensure_ca()
        crt, key = tls.ensure_server_cert(
            "server", [cfg["site"]["hostname"], "localhost", "127.0.0.1"]
        )
        extra_vars.update(hub_tls_certificate=str(crt), hub_tls_key=str(key))
    cmd = [
        _tool("ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "ansible" / "site.yml"),
        "-e",
        f"@{site_json}",
        "-e",
        f"@{images}",
        "-e",
        json.dumps(extra_vars),
        *(extra or []),
    ]
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"))
    progress.say("ansible-playbook ansible/site.yml")
    rc = subprocess.run(cmd, env=env).returncode
    _private_tree(creds)
    return rc


def _private_tree(top: Path) -> None:
    """Fetched credentials are the operator's alone: directories 0700, files 0600."""
    top.chmod(0o700)
    for path in top.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)


def register(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="deploy the site config to hosts with Ansible")
    p.add_argument("--site", type=Path, default=Path("site.yml"))
    p.add_argument(
        "--inventory",
        "-i",
        type=Path,
        required=True,
        help="Ansible inventory of Debian 12 hosts (see README: Real hosts)",
    )
    p.add_argument(
        "--no-health",
        action="store_true",
        help="skip the health check that follows a successful deploy (scirepo health)",
    )
    p.add_argument("ansible_args", nargs="*", help="passed to ansible-playbook (after --)")
    p.set_defaults(func=_cmd_deploy)


def _cmd_deploy(args) -> int:
    """Deploy, then check the host end to end (`scirepo health`) unless --no-health."""
    rc = run(args.site, args.inventory, extra=args.ansible_args)
    if rc != 0 or args.no_health:
        return rc
    from scirepo import health  # health imports nothing of the deploy; this keeps it so

    return health.after_deploy(args.site, args.inventory)
