"""The stock baseline of the benchmarks: JupyterHub + DockerSpawner with default settings.

Runs on this machine's Docker engine (not inside the repository host), as containers on a
user-defined network, all named scirepo-stock-*:

- scirepo-stock-hub: the `jupyterhub` stage of hub/Dockerfile (scirepo's hub image without
  the scirepo package and config: the same Python and Node packages, from the same lock
  files) with bench/stock/jupyterhub_config.py,
  which lists and explains every departure from the defaults; the hub starts
  configurable-http-proxy itself, whose public port is published on the loopback;
- scirepo-stock-jupyter-USER: the servers DockerSpawner starts, from scirepo's `base`
  image by digest (build/images.json `stacks.base.push_ref`, pulled from the local
  registry when this engine does not have it).

    .venv/bin/python bench/stock.py up      # build if needed, start, wait; prints URL
    .venv/bin/python bench/stock.py down    # remove every scirepo-stock-* container

The benchmark (bench/run.py) calls `up` and `down` itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scirepo.dockercli import DOCKER, DockerError, docker  # noqa: E402

HERE = Path(__file__).resolve().parent / "stock"
PREFIX = "scirepo-stock"
NETWORK = f"{PREFIX}-net"
HUB = f"{PREFIX}-hub"
SERVER_PREFIX = f"{PREFIX}-jupyter"  # DockerSpawner.prefix: servers are PREFIX-USER
DEFAULT_PORT = 18000
DEFAULT_BASE = "scirepo/runtime:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass
class Stock:
    """A running stock hub: where it answers and the password every user logs in with."""

    url: str
    password: str
    image: str


def hub_image_tag() -> str:
    """The stock image's tag names the JupyterHub and DockerSpawner of hub/requirements.txt
    (the lock it installs) and ends with a hash of what the image is built from, so a new
    lock or Dockerfile gets a new image."""
    parts = {p: (REPO / "hub" / p).read_bytes()
             for p in ("requirements.txt", "Dockerfile", "proxy/package-lock.json")}  # fmt: skip
    digest = hashlib.sha256(b"".join(parts.values()))
    lock = parts["requirements.txt"].decode()
    versions = []
    for pkg in ("jupyterhub", "dockerspawner"):
        found = re.search(rf"^{pkg}==([^\s\\]+)", lock, re.M)
        if not found:
            raise SystemExit(f"hub/requirements.txt pins no {pkg}")
        versions.append(f"{pkg}-{found.group(1)}")
    return f"{PREFIX}/hub:{'-'.join(versions)}-{digest.hexdigest()[:12]}"


def base_image(images_json: Path) -> str:
    """scirepo's `base` notebook image, by digest, present on this engine."""
    if not images_json.exists():
        raise SystemExit(f"{images_json} is missing: build the images first (make images)")
    stacks = json.loads(images_json.read_text())["scirepo_images"]["stacks"]
    if "base" not in stacks:
        raise SystemExit(f"{images_json} has no `base` stack")
    ref = stacks["base"]["push_ref"]
    if _run(DOCKER, "image", "inspect", ref).returncode != 0:
        print(f"pulling {ref}", flush=True)
        docker("pull", "-q", ref, capture=True)
    return ref


def build(base: str = DEFAULT_BASE, no_cache: bool = False, ca_bundle: str = CA_BUNDLE) -> str:
    """Build the stock hub image (BuildKit; the CA bundle is a secret); return its tag."""
    tag = hub_image_tag()
    if not no_cache and _run(DOCKER, "image", "inspect", tag).returncode == 0:
        return tag
    cmd = ["build", "-f", str(REPO / "hub" / "Dockerfile"), "--target", "jupyterhub"]
    cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    if Path(ca_bundle).exists():
        cmd += ["--secret", f"id=ca,src={ca_bundle}"]
    cmd += ["--no-cache"] if no_cache else []
    print(f"building {tag}", flush=True)
    docker(*cmd, "-t", tag, str(REPO), buildkit=True, capture=True)
    return tag


def up(
    images_json: Path, port: int = DEFAULT_PORT, base: str = DEFAULT_BASE, deadline: float = 120
) -> Stock:
    """Start (or restart from scratch) the stock hub; return once it answers."""
    down()
    tag = build(base)
    image = base_image(images_json)
    password = secrets.token_urlsafe(16)
    docker("network", "create", NETWORK, capture=True)
    docker(
        "run", "-d", "--name", HUB, "--network", NETWORK,
        "-p", f"127.0.0.1:{port}:8000",
        # DockerSpawner talks to this engine, as it would on a single-host install.
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{HERE / 'jupyterhub_config.py'}:/etc/jupyterhub/jupyterhub_config.py:ro",
        "-e", f"STOCK_PASSWORD={password}", "-e", f"STOCK_HUB_NAME={HUB}",
        "-e", f"STOCK_NETWORK={NETWORK}", "-e", f"STOCK_IMAGE={image}",
        "-e", f"STOCK_PREFIX={SERVER_PREFIX}",
        tag, capture=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, deadline)
    return Stock(url=url, password=password, image=image)


def wait_ready(url: str, deadline: float) -> None:
    """Wait until the hub answers through its proxy, with backoff; name its log if not."""
    t0, delay = time.monotonic(), 0.2
    while True:
        try:
            if requests.get(f"{url}/hub/api", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        state = _run(DOCKER, "inspect", "-f", "{{.State.Running}}", HUB).stdout.strip()
        if state != "true" or time.monotonic() - t0 > deadline:
            log = _run(DOCKER, "logs", "--tail", "30", HUB)
            raise SystemExit(
                f"the stock hub did not answer at {url} within {deadline} s "
                f"(running: {state or 'no'}):\n{log.stdout}{log.stderr}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def containers() -> list[str]:
    """Every container of the baseline, running or not: the hub and its servers."""
    out = _run(DOCKER, "ps", "-a", "--filter", f"name=^{PREFIX}-", "--format", "{{.Names}}")
    return out.stdout.split()


def down() -> None:
    """Remove the hub, its servers and the network (safe to call twice)."""
    names = containers()
    if names:
        _run(DOCKER, "rm", "-f", *names)
    if _run(DOCKER, "network", "inspect", NETWORK).returncode == 0:
        try:
            docker("network", "rm", NETWORK, capture=True)
        except DockerError as err:
            print(f"warning: {err}", file=sys.stderr)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "build"])
    parser.add_argument("--images-json", type=Path, default=REPO / "build" / "images.json")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--base-image", default=DEFAULT_BASE)
    parser.add_argument("--no-cache", action="store_true", help="build: rebuild every step")
    args = parser.parse_args()
    if args.action == "down":
        down()
        print("stock baseline removed")
    elif args.action == "build":
        print(build(args.base_image, no_cache=args.no_cache))
    else:
        stock = up(args.images_json, args.port, args.base_image)
        print(f"stock hub: {stock.url} (any user name, password {stock.password})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
