"""`scirepo health`: check a deployed host end to end, as a user would use it.

Runs on the operator's machine against a deployed host:

    scirepo health --site site.yml                      # the local host of `make up`
    scirepo health --site site.yml -i inventory.yml     # a real host
    scirepo health --site site.yml -i inv.yml --json    # the same result as JSON

It makes a throwaway platform user `health-<random hex>` on the host (as root, through the
deploy's own access: the inventory host's address, `ansible_user`, key and SSH options,
then `sudo -n`; `scirepo user add ... --password-file`, the file read back and deleted at
once), uses the platform as that user through the public endpoints, and always removes the
user again (try/finally, also on SIGTERM). The checks, each timed:

    tls           the HTTPS certificate verifies against the site's CA: the local CA
                  (.scirepo/tls/ca.crt) when tls.certificate is empty, else the system CAs,
                  or --cafile; the detail shows the days until it expires
    user          the throwaway user is created on the host (uid read back)
    hub-login     the hub's login form accepts the user's password
    server-start  the user's default server starts and answers through the proxy
                  (--server-deadline, default 120 s)
    kernel        a Python kernel in that server computes 6*7 == 42, as the user's uid/gid
    ssh           SSH login with the password (ssh.port of site.hostname; the local host's
                  forwarded port), `id` says the user's name and uid; a host key that
                  contradicts known_hosts (yours, or the inventory's UserKnownHostsFile)
                  fails the check, an unknown one is accepted and noted
    signup        GET /accounts/ answers 200 with the signup form (accounts.enabled only;
                  otherwise "skipped")
    server-stop   the hub stops the server
    cleanup       servers stopped and the hub's record of the user deleted (with the
                  accounts service's hub token, when the host has one), containers of the
                  user removed, its processes killed, `scirepo user remove --delete-data`
                  (home and workspace), then checked: no account, home, workspace or
                  container left

A check whose prerequisite failed is "skipped" (for example hub-login after user). The
table `check  status  seconds  detail` goes to stdout (with --json: one JSON object).
Exit code: 0 when every check passed (or was skipped by the config), 1 when any failed
(stderr names them), 2 for usage and config errors.

Which host: without --inventory, the local host (.scirepo/local/inventory.json,
https://localhost:<local.https_port>/, SSH on 127.0.0.1:<local.ssh_port>); the same
when --inventory is that file. With another inventory: https://<site.hostname>/ and SSH
on site.hostname:<ssh.port>; --url and --ssh HOST[:PORT] override them, --host picks one
host of an inventory with several. The deploy account needs passwordless sudo, as for
the deploy itself.

`scirepo deploy` and `scirepo local up` (so `make up`) run this at the end, after a
successful playbook run: a failed check makes their exit code 1 and the message says that
the deploy itself finished; `--no-health` skips it. On the local host a run takes about
7-11 s (a server start is 3-6 s of it), against about 56 s for a `local up` that changes
nothing, so it stays on there too, and every test session's `local up` checks the host.

requests, websocket-client and paramiko (the operator's venv has them: `.[deploy,test]`)
are imported only when a check runs, so the host's install of the CLI does not need them.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from scirepo import config as siteconfig
from scirepo import progress, remote, tls
from scirepo.config import ScirepoError

REPO = Path(__file__).resolve().parent.parent
LOCAL_INVENTORY = REPO / ".scirepo" / "local" / "inventory.json"
PREFIX = "health-"
CHECKS = (
    "tls",
    "user",
    "hub-login",
    "server-start",
    "kernel",
    "ssh",
    "signup",
    "server-stop",
    "cleanup",
)
OK, FAILED, SKIPPED = "ok", "FAILED", "skipped"
FULL_NAME = "scirepo health check"


class HealthError(ScirepoError):
    """`scirepo health` cannot run as asked (usage or config): exit code 2."""


class CheckFailed(Exception):
    """A check found something wrong; the message is the detail shown in the table."""


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    status: str  # OK, FAILED or SKIPPED
    seconds: float
    detail: str = ""


@dataclass
class Report:
    url: str
    user: str
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed

    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def status(self, name: str) -> str | None:
        for r in self.results:
            if r.name == name:
                return r.status
        return None

    def table(self) -> str:
        width = max([len("check"), *(len(r.name) for r in self.results)])
        lines = [f"{'check':<{width}}  {'status':<7}  {'seconds':>7}  detail"]
        for r in self.results:
            detail = " ".join(r.detail.split())
            lines.append(f"{r.name:<{width}}  {r.status:<7}  {r.seconds:7.2f}  {detail}")
        return "\n".join(lines)

    def summary(self) -> str:
        if self.ok:
            skipped = sum(r.status == SKIPPED for r in self.results)
            counts = f"{len(self.results) - skipped} checks ok" + (
                f", {skipped} skipped" if skipped else ""
            )
            return f"health: {counts} ({self.seconds:.1f} s, {self.url})"
        return f"health: FAILED: {', '.join(self.failed)} ({self.url})"

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "url": self.url,
                "user": self.user,
                "seconds": round(self.seconds, 3),
                "failed": self.failed,
                "checks": [{**asdict(r), "seconds": round(r.seconds, 3)} for r in self.results],
            },
            indent=2,
        )


class Runner:
    """Runs named checks in order, times them and records each result in `report`."""

    def __init__(self, report: Report, say: Callable[[str], None] | None = None):
        self.report, self.say = report, say or (lambda _text: None)

    def check(self, name: str, fn: Callable[[], str], needs: tuple[str, ...] = ()) -> bool:
        """Run `fn` (it returns the detail, raises to fail) unless a check in `needs` did
        not pass; True when it passed."""
        missing = [n for n in needs if self.report.status(n) != OK]
        if missing:
            result = Result(name, SKIPPED, 0.0, f"needs {', '.join(missing)}")
        else:
            t0 = time.monotonic()
            try:
                detail, status = fn(), OK
            except Skip as exc:
                detail, status = str(exc), SKIPPED
            except Exception as exc:  # noqa: BLE001 - any error is this check's failure
                detail, status = _error_text(exc), FAILED
            result = Result(name, status, time.monotonic() - t0, detail)
        self.report.results.append(result)
        self.say(f"{name}: {result.status} {result.detail}".rstrip())
        return result.status == OK


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A check that does not apply to this site (for example signup when it is off)."""


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, CheckFailed | ScirepoError):
        text = f"{type(exc).__name__}: {text}"
    return text[:400]


# --------------------------------------------------------------------------- the host


class Remote(remote.Remote):
    """The host's root shell, where a script that does not answer fails the check."""

    def run(self, script: str, timeout: float = 180) -> subprocess.CompletedProcess:
        try:
            return super().run(script, timeout)
        except remote.RemoteError as exc:
            raise CheckFailed(str(exc)) from exc


inventory_hosts = remote.hosts


# --------------------------------------------------------------------------- target


@dataclass
class Target:
    url: str  # https://host[:port], no trailing slash
    ssh_host: str
    ssh_port: int
    cafile: str | bool  # a CA file, or True for the system CAs
    remote: Remote


def _is_local_inventory(inventory: Path | None) -> bool:
    if inventory is None:
        return True
    return inventory.resolve() == LOCAL_INVENTORY.resolve()


def target(
    cfg: dict,
    inventory: Path | None = None,
    host: str | None = None,
    url: str | None = None,
    ssh: str | None = None,
    cafile: str | None = None,
) -> Target:
    """Where and how to check: the local host without an inventory, else a real one."""
    local = _is_local_inventory(inventory)
    inv = LOCAL_INVENTORY if inventory is None else inventory
    if not inv.exists():
        hint = "; bring the local host up (`make up`) or give --inventory" if local else ""
        raise HealthError(f"no inventory {inv}{hint}")
    hosts = inventory_hosts(inv)
    if host is not None:
        if host not in hosts:
            raise HealthError(f"{inv}: no host {host!r} (hosts: {', '.join(hosts) or 'none'})")
        name = host
    elif len(hosts) == 1:
        (name,) = hosts
    else:
        raise HealthError(
            f"{inv} has {len(hosts)} hosts ({', '.join(hosts)}); choose one with --host"
        )
    remote = Remote(name, hosts[name], cfg["ssh"]["deploy_user"])
    if local:
        default_url = f"https://localhost:{cfg['local']['https_port']}"
        default_ssh = ("127.0.0.1", cfg["local"]["ssh_port"])
    else:
        default_url = f"https://{cfg['site']['hostname']}"
        default_ssh = (cfg["site"]["hostname"], cfg["ssh"]["port"])
    ssh_host, ssh_port = default_ssh
    if ssh:
        ssh_host, _, port = ssh.rpartition(":") if ":" in ssh else (ssh, "", "")
        try:
            ssh_port = int(port) if port else cfg["ssh"]["port"]
        except ValueError as exc:
            raise HealthError(f"--ssh {ssh!r}: use HOST or HOST:PORT") from exc
    url = (url or default_url).rstrip("/")
    if urlsplit(url).scheme != "https" or not urlsplit(url).hostname:
        raise HealthError(f"--url {url!r}: give https://HOST[:PORT]")
    if cafile:
        ca: str | bool = cafile
    elif not cfg["tls"]["certificate"]:
        ca = str(tls.CA_CERT)  # the deploy had the local CA sign the host's certificate
    else:
        ca = True
    if isinstance(ca, str) and not Path(ca).is_file():
        raise HealthError(f"CA file {ca} does not exist")
    return Target(url, ssh_host, int(ssh_port), ca, remote)


# --------------------------------------------------------------------------- checks


def new_username(cfg: dict) -> str:
    """`health-` and 8 hex digits: passes users.validate_username's name rules."""
    name = PREFIX + secrets.token_hex(4)
    reason = siteconfig.reserved_reason(name, cfg["users"]["reserved_names"])
    if reason:
        raise HealthError(f"the health check's user name {name!r} is {reason}")
    return name


def check_tls(url: str, cafile: str | bool) -> str:
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile if isinstance(cafile, str) else None)
    with (
        socket.create_connection((parts.hostname, parts.port or 443), timeout=20) as sock,
        ctx.wrap_socket(sock, server_hostname=parts.hostname) as tsock,
    ):
        cert = tsock.getpeercert()
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
    days = (expires - datetime.now(UTC)).days
    issuer = dict(x[0] for x in cert.get("issuer", ()))
    by = issuer.get("commonName") or issuer.get("organizationName") or "?"
    return f"verified ({by}), expires in {days} days"


def _user_script(cfg: dict, name: str) -> str:
    p = cfg["paths"]
    pwfile = f"{p['secrets']}/health-password-{name}"
    return f"""set -eu
f={shlex.quote(pwfile)}
trap 'rm -f "$f"' EXIT
{shlex.quote(p["venv"])}/bin/scirepo user add {shlex.quote(name)} \\
  --name {shlex.quote(FULL_NAME)} --email {shlex.quote(cfg["site"]["contact_email"])} \\
  --password-file "$f" --json </dev/null
cat "$f"
"""


def create_user(remote: Remote, cfg: dict, name: str) -> tuple[int, str]:
    """Make the throwaway user on the host: (uid, password)."""
    res = remote.run(_user_script(cfg, name), timeout=120)
    if res.returncode != 0:
        raise CheckFailed(
            f"scirepo user add on {remote.name}: exit {res.returncode}: "
            f"{(res.stderr or res.stdout).strip()[-300:]}"
        )
    lines = res.stdout.splitlines()
    info = json.loads(lines[0])
    if not info.get("created"):
        raise CheckFailed(f"{name} existed already on the host")
    password = next(
        (ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.startswith("password:")), ""
    )
    if not password:
        raise CheckFailed("no password in the password file")
    return int(info["uid"]), password


# The hub's record of the user goes with the accounts service's token (admin:users), when
# the host has one; DockerSpawner names containers jupyter-NAME and jupyter-NAME-SERVER.
_CLEANUP = """set -u
name={name}
problems=""
if [ -s {token} ]; then
  if err=$({venv}/bin/python -c '{hub_py}' "$name" 2>&1 </dev/null); then
    echo "no hub record left"
  else
    problems="$problems hub-record(${{err##*$'\\n'}})"
  fi
else
  echo "hub record kept (no accounts hub token on the host)"
fi
containers=$(docker ps -a --format '{{{{.Names}}}}' | grep -E "^jupyter-$name(-|\\$)" || true)
if [ -n "$containers" ]; then
  docker rm -f $containers >/dev/null </dev/null && echo "removed" $containers
fi
if id -u "$name" >/dev/null 2>&1; then
  pkill -KILL -u "$name" && sleep 0.5
  {venv}/bin/scirepo user remove "$name" --delete-data >/dev/null </dev/null ||
    problems="$problems user-remove"
fi
id -u "$name" >/dev/null 2>&1 && problems="$problems account-left"
getent group "$name" >/dev/null && problems="$problems group-left"
[ -e {home} ] && problems="$problems home-left"
[ -e {workspace} ] && problems="$problems workspace-left"
docker ps -a --format '{{{{.Names}}}}' | grep -qE "^jupyter-$name(-|\\$)" &&
  problems="$problems container-left"
if [ -n "$problems" ]; then echo "left behind:$problems"; exit 1; fi
echo "user, home, workspace and containers removed"
"""
# Run on the host by the cleanup: the accounts service's own offboarding step.
_HUB_PY = (
    "import sys; from scirepo import config; from scirepo.accounts import flow; "
    "flow.stop_hub_user(config.resolve(config.load(config.SITE_JSON)), sys.argv[1])"
)


def cleanup_script(cfg: dict, name: str) -> str:
    p, q = cfg["paths"], shlex.quote
    return _CLEANUP.format(
        name=q(name),
        token=q(f"{p['secrets']}/accounts_hub_token"),
        venv=q(p["venv"]),
        hub_py=_HUB_PY,
        home=q(f"{cfg['users']['home_root']}/{name}"),
        workspace=q(f"{p['workspaces']}/{name}"),
    )


def cleanup(remote: Remote, cfg: dict, name: str) -> str:
    res = remote.run(cleanup_script(cfg, name), timeout=180)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0:
        detail = "; ".join(lines) or res.stderr.strip()[-300:]
        raise CheckFailed(f"exit {res.returncode}: {detail}")
    return "; ".join(lines)


def check_ssh(t: Target, name: str, password: str, uid: int) -> str:
    import paramiko

    logging.getLogger("paramiko").setLevel(logging.WARNING)  # no "Connected ..." lines

    class _Note(paramiko.MissingHostKeyPolicy):
        unknown = False

        def missing_host_key(self, client, hostname, key):
            _Note.unknown = True  # accepted for this connection only, never saved

    client = paramiko.SSHClient()
    client.load_system_host_keys()
    for path in t.remote.known_hosts:
        p = Path(path).expanduser()
        if p.is_file():
            client.get_host_keys().load(str(p))
    client.set_missing_host_key_policy(_Note())
    try:
        client.connect(
            t.ssh_host,
            port=t.ssh_port,
            username=name,
            password=password,
            allow_agent=False,
            look_for_keys=False,
            timeout=20,
            auth_timeout=20,
            banner_timeout=20,
        )
        _, out, err = client.exec_command("echo $(id -un) $(id -u)", timeout=30)
        rc = out.channel.recv_exit_status()
        text = out.read().decode().strip()
    finally:
        client.close()
    if rc != 0 or text.split() != [name, str(uid)]:
        raise CheckFailed(f"`id` over SSH: exit {rc}, {text!r} {err.read().decode()[:200]!r}")
    note = ", host key not in known_hosts" if _Note.unknown else ""
    return f"{name}@{t.ssh_host}:{t.ssh_port} uid {uid}{note}"


def check_signup(url: str, cafile: str | bool) -> str:
    import requests

    res = requests.get(f"{url}/accounts/", timeout=30, verify=cafile, allow_redirects=True)
    if res.status_code != 200:
        raise CheckFailed(f"GET /accounts/: {res.status_code}")
    if "<form" not in res.text or 'name="email"' not in res.text:
        raise CheckFailed("GET /accounts/: 200 but no signup form in the page")
    return "GET /accounts/: 200 with the signup form"


def run_checks(
    cfg: dict, t: Target, server_deadline: float = 120, say: Callable[[str], None] | None = None
) -> Report:
    """Every check against target `t`; the throwaway user is always cleaned up."""
    try:
        from scirepo.hubclient import HubUser
    except ImportError as exc:
        raise HealthError(
            f"scirepo health needs requests, websocket-client and paramiko ({exc}); "
            "pip install -e '.[deploy,test]'"
        ) from exc
    name = new_username(cfg)
    report = Report(url=t.url, user=name)
    run = Runner(report, say)
    t0 = time.monotonic()
    state: dict = {}
    try:
        run.check("tls", lambda: check_tls(t.url, t.cafile))

        def user() -> str:
            state["uid"], state["password"] = create_user(t.remote, cfg, name)
            return f"{name} (uid {state['uid']}) on {t.remote.name}"

        def login() -> str:
            state["hub"] = HubUser(t.url, name, cafile=t.cafile)
            if not state["hub"].login(state["password"]):
                raise CheckFailed("the hub refused the password")
            return f"{t.url}/hub/login"

        def start() -> str:
            return f"ready in {state['hub'].start_server(deadline=server_deadline):.1f} s"

        def kernel() -> str:
            out = state["hub"].run_code("import os\nprint(6 * 7, os.getuid(), os.getgid())")
            uid = str(state["uid"])
            if out["status"] != "ok" or out["stdout"].split() != ["42", uid, uid]:
                raise CheckFailed(f"expected '42 {uid} {uid}', got {out}")
            return f"6*7 = 42 as uid {uid}"

        def stop() -> str:
            t1 = time.monotonic()
            state["hub"].stop_server(deadline=60)
            return f"stopped in {time.monotonic() - t1:.1f} s"

        def signup() -> str:
            if not cfg["accounts"]["enabled"]:
                raise Skip("accounts.enabled is false")
            return check_signup(t.url, t.cafile)

        run.check("user", user)
        run.check("hub-login", login, needs=("user",))
        run.check("server-start", start, needs=("hub-login",))
        run.check("kernel", kernel, needs=("server-start",))
        run.check(
            "ssh", lambda: check_ssh(t, name, state["password"], state["uid"]), needs=("user",)
        )
        run.check("signup", signup)
        run.check("server-stop", stop, needs=("server-start",))
    finally:
        state.pop("password", None)
        run.check("cleanup", lambda: cleanup(t.remote, cfg, name))
        report.seconds = time.monotonic() - t0
    return report


# --------------------------------------------------------------------------- CLI


def _raise_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt so that the cleanup's `finally` runs; returns
    the handler to restore (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def run(
    site: Path,
    inventory: Path | None = None,
    host: str | None = None,
    url: str | None = None,
    ssh: str | None = None,
    cafile: str | None = None,
    as_json: bool = False,
    server_deadline: float = 120,
) -> int:
    """Check the host, print the table (or JSON); 0 all ok, 1 a check failed."""
    cfg = siteconfig.resolve(siteconfig.load(site))
    t = target(cfg, inventory, host, url, ssh, cafile)
    say = None if as_json else (lambda text: progress.say(f"health: {text}"))
    if say:
        say(f"checking {t.url} (SSH {t.ssh_host}:{t.ssh_port}) via {t.remote.name}")
    old = _raise_on_sigterm()
    try:
        report = run_checks(cfg, t, server_deadline=server_deadline, say=say)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if as_json:
        print(report.to_json(), flush=True)
    else:
        print(report.table(), flush=True)
        print(report.summary(), flush=True)
    if not report.ok:
        print(f"health check failed: {', '.join(report.failed)}", file=sys.stderr, flush=True)
    return report.exit_code()


def after_deploy(site: Path, inventory: Path | None = None) -> int:
    """The health check at the end of a deploy: its exit code, with a message that says
    the deploy itself went through. An inventory of several hosts is not checked here
    (one site config names one public host): the operator runs it per host."""
    rerun = f"scirepo health --site {site}" + (f" -i {inventory}" if inventory else "")
    print("Health check of the deployed host (skip it with --no-health)", flush=True)
    try:
        if inventory is not None and len(inventory_hosts(inventory)) > 1:
            progress.say(f"health: several hosts in {inventory}; check each: {rerun} --host H")
            return 0
        rc = run(site, inventory)
    except ScirepoError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        rc = 2
    if rc != 0:
        print(
            f"The deploy finished, but the host is not healthy (above). Fix it, then rerun "
            f"the check alone: {rerun}",
            file=sys.stderr,
            flush=True,
        )
    return rc


def _add_target_arguments(p) -> None:
    p.add_argument(
        "--inventory",
        "-i",
        type=Path,
        help="Ansible inventory of the host (default: the local host of `make up`)",
    )
    p.add_argument("--host", help="the inventory host to check when it lists several")
    p.add_argument("--url", help="HTTPS endpoint (default: https://<site.hostname>)")
    p.add_argument("--ssh", metavar="HOST[:PORT]", help="sshd (default: site.hostname:ssh.port)")
    p.add_argument("--cafile", help="CA to verify HTTPS with (default: local CA or the system CAs)")
    p.add_argument(
        "--server-deadline",
        type=float,
        default=120,
        metavar="SECONDS",
        help="how long a server may take to start (default 120)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "health",
        help="check a deployed host end to end as a throwaway user",
        description="Log in as a throwaway user, start a server, run code in a kernel, "
        "check SSH and the signup page, clean up. Exit 0: all ok; 1: a check failed "
        "(named on stderr); 2: usage or config error.",
    )
    p.add_argument("--site", type=Path, default=Path("site.yml"))
    _add_target_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(
        func=lambda a: run(
            a.site,
            a.inventory,
            host=a.host,
            url=a.url,
            ssh=a.ssh,
            cafile=a.cafile,
            as_json=a.json,
            server_deadline=a.server_deadline,
        )
    )
