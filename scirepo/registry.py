"""The local image registry of `make up` (Debian's docker-registry, served over TLS).

Images are built on the operator's machine, pushed here, and the host pulls them by digest,
as it would pull from a site's GitLab registry. It listens only on the Docker bridge
address, so containers (the host) reach it and the rest of the network does not.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from scirepo import daemon, progress, tls
from scirepo.config import ScirepoError
from scirepo.dockercli import apt_install

DIR = tls.TLS_DIR.parent / "registry"
PIDFILE = DIR / "registry.pid"
BINARY = "/usr/bin/docker-registry"


class RegistryError(ScirepoError):
    """The local registry could not be started; the message says why."""


def _answers(addr: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(tls.CA_CERT))
    with urllib.request.urlopen(f"https://{addr}/v2/", context=ctx, timeout=3) as r:  # noqa: S310
        return r.status == 200


def ensure(cfg: dict, gateway: str) -> str:
    """Start the registry if needed; return the address to push to (gateway:port)."""
    if not Path(BINARY).exists():
        progress.say("installing Debian's docker-registry")
        apt_install(["docker-registry"])
    port = cfg["local"]["registry_port"]
    addr = f"{gateway}:{port}"
    pull_host = cfg["images"]["registry"].split(":")[0]
    crt, key = tls.ensure_server_cert("registry", [pull_host, gateway])
    # The engine on this machine trusts the local CA for this registry only.
    certs_d = Path("/etc/docker/certs.d") / addr
    certs_d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tls.CA_CERT, certs_d / "ca.crt")
    if daemon.running(PIDFILE):
        try:
            if _answers(addr):
                return addr
        except OSError:
            pass
        stop()
    DIR.mkdir(parents=True, exist_ok=True)
    conf = DIR / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {DIR / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{addr}', tls: {{certificate: '{crt}', key: '{key}'}}}}\n"
    )
    log = open(DIR / "registry.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [BINARY, "serve", str(conf)], stdout=log, stderr=log, start_new_session=True
    )
    PIDFILE.write_text(str(proc.pid))

    def up() -> bool:
        if proc.poll() is not None:  # it exited: say why instead of waiting out the deadline
            PIDFILE.unlink(missing_ok=True)
            tail = (DIR / "registry.log").read_text(errors="replace")[-600:]
            raise RegistryError(f"the registry at {addr} exited: {tail.strip()}")
        return _answers(addr)

    progress.wait_for(f"the registry at {addr}", up, deadline=30)
    progress.say(f"registry at {addr}")
    return addr


def stop() -> None:
    daemon.stop(PIDFILE)


def remove_data() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
