"""Root on the hosts of an Ansible inventory, reached the way the deploy reaches them.

`hosts()` resolves an inventory (any format `ansible-inventory` reads); `Remote` runs
commands as root on one host over its ansible_* connection variables: plain `ssh` with the
inventory's host, port, user, key and options and `sudo -n` (or `docker exec` / local for
those connections). Used by the commands that act on a deployed host from the operator's
machine: `scirepo health`, `scirepo backup`, `scirepo restore`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from scirepo.config import ScirepoError


class RemoteError(ScirepoError):
    """A host could not be reached as the inventory says, or a command on it failed."""


def hosts(inventory: Path) -> dict[str, dict]:
    """{host: hostvars} of an Ansible inventory."""
    tool = Path(sys.executable).parent / "ansible-inventory"
    cmd = [str(tool) if tool.exists() else "ansible-inventory", "-i", str(inventory), "--list"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise RemoteError("ansible-inventory not found: install the deploy tools") from exc
    if res.returncode != 0:
        raise RemoteError(f"{inventory}: ansible-inventory failed: {res.stderr.strip()[-500:]}")
    data = json.loads(res.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = set(hostvars)
    for group in data.values():
        if isinstance(group, dict):
            names.update(group.get("hosts", []))
    return {h: hostvars.get(h, {}) for h in sorted(names)}


def known_hosts_files(ssh_args: list[str]) -> list[str]:
    """Files named by `-o UserKnownHostsFile=...` in the inventory's SSH options."""
    return re.findall(r"(?i)UserKnownHostsFile[= ]+(\S+)", " ".join(ssh_args))


class Remote:
    """A root shell on one host of an inventory."""

    def __init__(self, name: str, hostvars: dict, deploy_user: str = "scirepo-deploy"):
        self.name = name
        conn = hostvars.get("ansible_connection", "ssh")
        user = hostvars.get("ansible_user") or hostvars.get("ansible_ssh_user") or deploy_user
        self.sudo = [] if user == "root" else ["sudo", "-n"]
        self.ssh = conn in ("ssh", "smart", "paramiko", "ansible.builtin.ssh")
        if self.ssh:
            host = hostvars.get("ansible_host") or hostvars.get("ansible_ssh_host") or name
            port = hostvars.get("ansible_port") or hostvars.get("ansible_ssh_port") or 22
            key = hostvars.get("ansible_ssh_private_key_file") or hostvars.get(
                "ansible_private_key_file"
            )
            args = shlex.split(hostvars.get("ansible_ssh_common_args", "")) + shlex.split(
                hostvars.get("ansible_ssh_extra_args", "")
            )
            self.prefix = [
                "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", str(port),
                *(["-i", str(key)] if key else []), *args, f"{user}@{host}", "--",
            ]  # fmt: skip
            self.ssh_address = (str(host), int(port))
            self.known_hosts = known_hosts_files(args)
        elif conn in ("docker", "community.docker.docker"):
            container = hostvars.get("ansible_host") or name
            self.prefix, self.sudo = ["docker", "exec", "-i", container], []
            self.ssh_address, self.known_hosts = None, []
        elif conn in ("local", "ansible.builtin.local"):
            self.prefix, self.ssh_address, self.known_hosts = [], None, []
        else:
            raise RemoteError(f"host {name}: ansible_connection {conn!r} is not supported")

    def command(self, argv: list[str]) -> list[str]:
        """The local argv that runs `argv` as root on the host."""
        if self.ssh:  # ssh joins its arguments into one line for the remote shell
            return [*self.prefix, *(shlex.quote(a) for a in [*self.sudo, *argv])]
        return [*self.prefix, *self.sudo, *argv]

    @property
    def argv(self) -> list[str]:
        """The local argv of a root `bash -s` on the host (`run`)."""
        return self.command(["bash", "-s"])

    def run(self, script: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run a bash script as root; its output as text (never raises on exit codes)."""
        try:
            return subprocess.run(
                self.argv, input=script, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise RemoteError(f"no answer from {self.name} within {timeout:.0f} s") from exc

    def run_root(self, argv: list[str], stdin: bytes | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        """Run `argv` as root with bytes in and out; RemoteError with its stderr if it fails."""
        res = subprocess.run(self.command(argv), input=stdin, capture_output=True, check=False)
        if check and res.returncode != 0:
            detail = res.stderr.decode(errors="replace").strip()[-2000:]
            raise RemoteError(
                f"{self.name}: `{shlex.join(argv)}` failed ({res.returncode}): {detail}"
            )
        return res
