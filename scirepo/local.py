"""The local repository host behind `make up`, `make down` and `make clean`.

`up` makes this machine able to build and deploy (a Docker engine, a local CA, a registry),
builds the images and pushes them to that registry, starts a Debian 12 container running
systemd and sshd (the "host"), and deploys onto it with the same Ansible playbook and the
same SSH connection that a real host gets (`scirepo deploy`). Every step is reused when it
is already done, so a second `up` is quick and the playbook reports changed=0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scirepo import config as siteconfig
from scirepo import deploy, images, mailcatcher, progress, registry, tls
from scirepo.dockercli import DOCKER, apt_install, docker, docker_ok

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".scirepo"
LOCAL = STATE / "local"
HOST_IMAGE = "scirepo/host:bookworm"
# Capabilities a systemd container with its own dockerd needs where --privileged is refused
# (ref: ../shared/MACHINE.md, measured on these machines).
HOST_CAPS = [
    "SYS_ADMIN",
    "NET_ADMIN",
    "SYS_PTRACE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_TIME",
    "AUDIT_CONTROL",
    "SYS_BOOT",
    "LEASE",
    "LINUX_IMMUTABLE",
    "IPC_LOCK",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_TTY_CONFIG",
    "NET_BROADCAST",
    "IPC_OWNER",
    "DAC_READ_SEARCH",
]


def _volume(cfg: dict) -> str:
    return f"{cfg['local']['container']}-docker"


def ensure_engine() -> None:
    """Install and start a Docker engine on this machine when there is none."""
    if docker_ok():
        return
    if not Path("/usr/sbin/dockerd").exists():
        progress.say("installing the Docker engine (Debian's docker.io)")
        apt_install(["docker.io"])
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "start", "docker"], check=True)
    else:
        # No systemd as PID 1 (CI, containers): run dockerd in the background ourselves.
        log = open("/var/log/scirepo-dockerd.log", "ab")  # noqa: SIM115 - handed to dockerd
        subprocess.Popen(["/usr/sbin/dockerd"], stdout=log, stderr=log, start_new_session=True)
    progress.wait_for("the Docker engine", docker_ok, deadline=60)


def gateway_ip() -> str:
    """Address of this machine on Docker's default bridge, reachable from containers."""
    out = docker(
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        capture=True,
    ).strip()
    if out:
        return out
    show = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    return show.split()[3].split("/")[0]


def host_state(cfg: dict) -> str:
    """'running', 'exited', ... or '' when the host container does not exist."""
    res = subprocess.run(
        [DOCKER, "inspect", "-f", "{{.State.Status}}", cfg["local"]["container"]],
        capture_output=True,
        text=True,
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def _run_host(cfg: dict) -> None:
    name, loc = cfg["local"]["container"], cfg["local"]
    common = [
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        name,
        "--cgroupns=host",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-v",
        f"{_volume(cfg)}:/var/lib/docker",
        "--add-host",
        f"{cfg['images']['registry'].split(':')[0]}:host-gateway",
        "-p",
        f"127.0.0.1:{loc['https_port']}:443",
        "-p",
        f"127.0.0.1:{loc['ssh_port']}:{cfg['ssh']['port']}",
        "--label",
        "org.scirepo.role=local-host",
    ]
    res = subprocess.run(
        [DOCKER, *common[:4], "--privileged", *common[4:], HOST_IMAGE],
        capture_output=True,
        text=True,
    )
    if res.returncode == 0:
        return
    # Kernels that refuse --privileged ("unable to apply caps") take explicit capabilities.
    progress.say("--privileged refused here; starting the host with explicit capabilities")
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
    caps = [a for c in HOST_CAPS for a in ("--cap-add", c)]
    secopts = [
        a
        for o in ("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined")
        for a in ("--security-opt", o)
    ]
    docker(*common[:4], *caps, *secopts, *common[4:], HOST_IMAGE)


def _host_booted(name: str) -> bool:
    res = subprocess.run(
        [DOCKER, "exec", name, "systemctl", "is-system-running"], capture_output=True, text=True
    )
    return res.stdout.strip() in ("running", "degraded")


def ensure_host(cfg: dict, base_image: str) -> None:
    """Create or start the host container and let the deploy account in with a key."""
    name = cfg["local"]["container"]
    state = host_state(cfg)
    if state == "running":
        progress.say(f"host container {name} is running")
    elif state:
        progress.say(f"starting the existing host container {name}")
        docker("start", name, capture=True)
    else:
        progress.say(f"building the host image {HOST_IMAGE}")
        docker(
            "build",
            "-q",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "-t",
            HOST_IMAGE,
            str(REPO / "local" / "host"),
            capture=True,
            buildkit=True,
        )
        progress.say(f"creating the host container {name}")
        _run_host(cfg)
    progress.wait_for("systemd in the host", lambda: _host_booted(name), deadline=90)
    _bootstrap_deploy_account(cfg)


def _bootstrap_deploy_account(cfg: dict) -> None:
    """What an operator does by hand on a real host: a deploy account with a key and sudo."""
    user, name = cfg["ssh"]["deploy_user"], cfg["local"]["container"]
    key = LOCAL / "deploy_key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scirepo-deploy", "-f", str(key)],
            check=True,
        )
    pub = (LOCAL / "deploy_key.pub").read_text().strip()
    script = f"""set -e
id -u {user} >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash {user}
install -d -m 0700 -o {user} -g {user} ~{user}/.ssh
printf '%s\\n' '{pub}' > ~{user}/.ssh/authorized_keys
chown {user}:{user} ~{user}/.ssh/authorized_keys; chmod 0600 ~{user}/.ssh/authorized_keys
printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {user} > /etc/sudoers.d/scirepo-deploy
chmod 0440 /etc/sudoers.d/scirepo-deploy
"""
    docker("exec", name, "bash", "-c", script, capture=True)
    _write_known_hosts(cfg)


def _write_known_hosts(cfg: dict) -> None:
    """The host's SSH keys, read through Docker (a channel we trust), as the only known
    keys of its forwarded port: no trust on first use, and a recreated host (new keys)
    is simply known anew."""
    name, port = cfg["local"]["container"], cfg["local"]["ssh_port"]
    keys = docker("exec", name, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub", capture=True)
    lines = [
        f"[127.0.0.1]:{port} {' '.join(line.split()[:2])}"
        for line in keys.splitlines()
        if line.strip()
    ]
    (LOCAL / "known_hosts").write_text("\n".join(lines) + "\n")


def write_inventory(cfg: dict) -> Path:
    """The Ansible inventory for the local host: a plain SSH host on a forwarded port."""
    inv = {
        "all": {
            "hosts": {
                cfg["local"]["container"]: {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": cfg["local"]["ssh_port"],
                    "ansible_user": cfg["ssh"]["deploy_user"],
                    "ansible_ssh_private_key_file": str(LOCAL / "deploy_key"),
                    "ansible_ssh_common_args": (
                        f"-o UserKnownHostsFile={LOCAL / 'known_hosts'} "
                        "-o StrictHostKeyChecking=yes"
                    ),
                    "ansible_python_interpreter": "/usr/bin/python3",
                    # The local registry is signed by the local CA; a real site's
                    # registry normally has a publicly trusted certificate.
                    "docker_registry_ca": str(tls.CA_CERT),
                }
            }
        }
    }
    path = LOCAL / "inventory.json"
    path.write_text(json.dumps(inv, indent=2))
    return path


def up(site: Path, health: bool = True) -> int:
    """Bring the local host up (or bring it back), deploy, check it end to end (`scirepo
    health`, about 7-11 s, unless `health` is false) and say where things are."""
    started = time.monotonic()
    cfg = siteconfig.resolve(siteconfig.load(site))
    steps = progress.Steps(
        [
            "Docker engine",
            "local CA and registry",
            "images",
            "host container",
            "deploy with Ansible",
        ]
    )
    steps.next()
    LOCAL.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o700)
    ensure_engine()
    steps.next()
    gw = gateway_ip()
    tls.ensure_ca()
    push_registry = registry.ensure(cfg, gw)
    mailcatcher.ensure(gw)
    steps.next()
    images.build_all(cfg, push_registry=push_registry)  # makes images.DEBIAN_IMAGE first
    steps.next()
    ensure_host(cfg, images.DEBIAN_IMAGE)
    _ensure_hosts_entry(cfg, mailcatcher.HOSTNAME, gw)
    steps.next()
    inventory = write_inventory(cfg)
    rc = deploy.run(site, inventory)
    if rc != 0:
        return rc
    if health:
        from scirepo import health as healthcheck  # imports nothing of local or deploy

        rc = healthcheck.after_deploy(site)
        if rc != 0:
            return rc
    _print_summary(cfg, time.monotonic() - started)
    return 0


def _ensure_hosts_entry(cfg: dict, name: str, address: str) -> None:
    """Make `name` resolve to `address` in the host container (Docker rewrites /etc/hosts
    when the container starts, so this runs at every `up`)."""
    script = f"grep -q ' {name}$' /etc/hosts || echo '{address} {name}' >> /etc/hosts"
    subprocess.run([DOCKER, "exec", cfg["local"]["container"], "sh", "-c", script], check=True)


def _print_summary(cfg: dict, seconds: float) -> None:
    loc = cfg["local"]
    admin = cfg["users"]["admins"][0] if cfg["users"]["admins"] else None
    lines = [
        "",
        f"scirepo is up ({seconds:.0f} s).",
        f"  JupyterHub   https://localhost:{loc['https_port']}/",
        f"  TLS CA       {tls.CA_CERT}  (trust it, or: curl --cacert {tls.CA_CERT} ...)",
        f"  SSH          ssh -p {loc['ssh_port']} USER@localhost",
    ]
    if admin:
        creds = deploy.CREDENTIALS / cfg["local"]["container"] / f"admin-{admin}"
        lines.append(f"  Admin        {admin}: first password in {creds}")
    lines.append(
        f"  Add a user   {sys.argv[0].rsplit('/', 1)[-1]} local exec scirepo user add "
        "NAME --name 'Full Name' --email ADDRESS"
    )
    print("\n".join(lines), flush=True)


def down(site: Path) -> int:
    """Stop the host and the registry; every file and user stays."""
    cfg = siteconfig.resolve(siteconfig.load(site))
    if not docker_ok():
        return 0
    if host_state(cfg) == "running":
        progress.say(f"stopping {cfg['local']['container']} (data kept)")
        docker("stop", cfg["local"]["container"], capture=True)
    registry.stop()
    mailcatcher.stop()
    return 0


def clean(site: Path, keep_images: bool = False) -> int:
    """Remove the host, its Docker volume, the registry and the local state (not the CA).
    With `keep_images`, the registry's images stay: the registry stands for one on the
    network, not for a part of the host, and the next `up` then pushes nothing new (a
    new host in about 5 minutes less on the 2-core machines)."""
    cfg = siteconfig.resolve(siteconfig.load(site))
    if docker_ok():
        subprocess.run([DOCKER, "rm", "-f", cfg["local"]["container"]], capture_output=True)
        subprocess.run([DOCKER, "volume", "rm", "-f", _volume(cfg)], capture_output=True)
    registry.stop()
    if not keep_images:
        registry.remove_data()
    mailcatcher.stop()
    shutil.rmtree(mailcatcher.DIR, ignore_errors=True)
    shutil.rmtree(LOCAL, ignore_errors=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)
    kept = "the CA in .scirepo/tls" + (" and the registry's images" if keep_images else "")
    progress.say(f"local host removed ({kept} kept)")
    return 0


def _command(parser: argparse.ArgumentParser, command: list[str]) -> list[str]:
    """`local exec`'s command, without a leading `--`; none is a usage error (exit 2)."""
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("the command to run is missing: local exec COMMAND [ARG ...]")
    return command


def exec_on_host(site: Path, command: list[str]) -> int:
    """Run a command as root on the local host (what `sudo` over SSH is on a real host)."""
    cfg = siteconfig.resolve(siteconfig.load(site))
    tty = ["-t"] if sys.stdin.isatty() else []
    return subprocess.run(
        [DOCKER, "exec", "-i", *tty, cfg["local"]["container"], *command]
    ).returncode


def register(subparsers) -> None:
    p = subparsers.add_parser("local", help="the local repository host (make up/down/clean)")
    sub = p.add_subparsers(dest="local_command", required=True)
    for verb, fn, text in (
        ("up", up, "build, start and deploy the local host, then check it (scirepo health)"),
        ("down", down, "stop the local host, keeping its data"),
        ("clean", clean, "remove the local host and its data"),
    ):
        s = sub.add_parser(verb, help=text)
        s.add_argument("--site", type=Path, default=Path("site.yml"))
        s.set_defaults(func=lambda a, fn=fn: fn(a.site))
        if verb == "up":
            s.add_argument(
                "--no-health", action="store_true", help="skip the health check after the deploy"
            )
            s.set_defaults(func=lambda a: up(a.site, health=not a.no_health))
        if verb == "clean":
            s.add_argument(
                "--keep-images",
                action="store_true",
                help="keep the images in the local registry (the next up pushes nothing new)",
            )
            s.set_defaults(func=lambda a: clean(a.site, keep_images=a.keep_images))
    s = sub.add_parser(
        "exec",
        help="run a command as root on the local host",
        description="Run COMMAND as root on the local host. Everything after COMMAND is its "
        "own, options included: local exec scirepo user add jdoe --name 'John Doe'.",
    )
    s.add_argument("--site", type=Path, default=Path("site.yml"))
    # REMAINDER: the command's own options (--name ...) are not taken for exec's.
    s.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    s.set_defaults(func=lambda a, p=s: exec_on_host(a.site, _command(p, a.command)))
