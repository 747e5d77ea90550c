"""One way to call the Docker client, shared by the image builder and the local host.

Debian's client (/usr/bin/docker) has BuildKit built in; another client earlier on PATH may
lack buildx (ref: ../shared/MACHINE.md), so Debian's is preferred when it is there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from scirepo.config import ScirepoError

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class DockerError(ScirepoError):
    """A docker command failed; the message carries its stderr."""


def docker(
    *args: str, capture: bool = False, buildkit: bool = False, input: bytes | None = None
) -> str:
    """Run `docker ARGS`; raise DockerError naming the command and its error output."""
    env = dict(os.environ, DOCKER_BUILDKIT="1") if buildkit else None
    res = subprocess.run(
        [DOCKER, *args],
        env=env,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if res.returncode != 0:
        err = (res.stderr or b"").decode(errors="replace").strip()
        raise DockerError(f"docker {' '.join(args[:3])} ... failed: {err[-2000:]}")
    return (res.stdout or b"").decode(errors="replace")


def docker_ok() -> bool:
    """True when a Docker engine answers."""
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def apt_install(packages: list[str]) -> None:
    """Install Debian packages on this machine (the engine, the registry) when missing."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env)
