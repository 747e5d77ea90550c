"""Run containers of an image under test with Debian's docker client."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scirepo.dockercli import DOCKER

UID = 23456
# Start as root with the user's identity, as the hub does: the entrypoint drops to it.
USER_ENV = ["-e", "NB_USER=alice", "-e", f"NB_UID={UID}", "-e", f"NB_GID={UID}"]


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {res.returncode}:\n{res.stderr}")
    return res


@dataclass(frozen=True)
class Image:
    ref: str

    def run(
        self,
        *cmd: str,
        opts: tuple[str, ...] = (),
        check: bool = True,
        user_env: bool = False,
        **kw,
    ) -> subprocess.CompletedProcess:
        """`docker run --rm [user env] OPTS IMAGE CMD`."""
        env = USER_ENV if user_env else []
        return docker("run", "--rm", *env, *opts, self.ref, *cmd, check=check, **kw)

    def inspect(self, fmt: str) -> str:
        return docker("image", "inspect", "--format", fmt, self.ref).stdout

    def __str__(self) -> str:
        return self.ref


def make_home() -> Path:
    """A home directory owned by the test user (mode 0700), as the hub mounts it."""
    path = Path(tempfile.mkdtemp(prefix="scirepo-home-"))
    os.chown(path, UID, UID)
    path.chmod(0o700)
    return path


def remove_home(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
