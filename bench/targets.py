"""The deployments the platform benchmark measures, behind one interface.

bench/harness.py measures a `Target` without knowing which one it is: where the hub
answers (URL and CA), how to make users and learn their passwords, which containers are
the hub and the proxy, which one is a user's server, and how to read their memory.

- `Scirepo`: the local repository host of `make up` (or any tree's): users are real Unix
  users made with `scirepo user add` inside the host container; memory of the containers
  of the host's own Docker engine is read inside the host (`docker exec HOST python3`).
- `Stock`: the baseline of bench/stock.py on this machine's engine: every user name logs
  in with one shared password; memory is read on this machine.

Memory is read the same way for both (CGROUP_MEMORY below).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests  # noqa: E402
import stock  # noqa: E402

from scirepo import config as siteconfig  # noqa: E402
from scirepo.browser import trust_certificate  # noqa: E402
from scirepo.dockercli import DOCKER, DockerError  # noqa: E402
from scirepo.hub.config import HUB_NAME, PROXY_NAME  # noqa: E402
from scirepo.hubclient import HubUser  # noqa: E402

# Memory of containers, run by the Python of the machine whose engine runs them (this one,
# or the host through `docker exec`): what `docker stats` shows, usage minus the inactive
# file cache, read from each container's memory cgroup (v1 or v2). Read directly because
# `docker stats` of the engine on the build machines answers 0 B for new containers.
CGROUP_MEMORY = r"""
import json, subprocess, sys
from pathlib import Path
res = subprocess.run(["docker", "inspect", "-f", "{{.Name}} {{.State.Pid}}", *sys.argv[1:]],
                     capture_output=True, text=True)
out = {}
for line in res.stdout.splitlines():
    name, pid = line.split()
    if pid == "0":
        continue  # not running
    v1 = v2 = None
    for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = entry.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "":
            v2 = path
    if v1 is not None:
        d = Path("/sys/fs/cgroup/memory" + v1)
        usage, inactive = int((d / "memory.usage_in_bytes").read_text()), "total_inactive_file"
    else:
        d = Path("/sys/fs/cgroup" + v2)
        usage, inactive = int((d / "memory.current").read_text()), "inactive_file"
    stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
    out[name.lstrip("/")] = (usage - int(stat.get(inactive, 0))) / 2**20
print(json.dumps(out))
"""


class TargetError(RuntimeError):
    """A deployment cannot be measured (not running, no credentials, a failed command)."""


class Target:
    """A deployment under test. Subclasses fill in the attributes and the methods."""

    name = ""
    url = ""
    cafile: str | bool = True
    hub_containers: tuple[str, ...] = ()

    def setup(self) -> None:
        """Make the deployment ready to be measured (check it runs, start it)."""

    def teardown(self) -> None:
        """Remove what setup and the benchmark made (users, servers)."""

    def new_users(self, n: int) -> list[tuple[str, str]]:
        """n new users who can log in: [(name, password)]."""
        raise NotImplementedError

    def server_container(self, user: str) -> str:
        raise NotImplementedError

    def memory(self, names: list[str]) -> dict[str, float]:
        """MiB per container of `names` that is running (others are left out)."""
        raise NotImplementedError

    def browser_args(self) -> list[str]:
        """Extra Chromium flags (trust of the hub's certificate)."""
        return []

    def client(self, user: str) -> HubUser:
        return HubUser(self.url, user, cafile=self.cafile)

    @staticmethod
    def _cgroup_memory(python: list[str], names: list[str]) -> dict[str, float]:
        res = subprocess.run(
            [*python, "-c", CGROUP_MEMORY, *names], capture_output=True, text=True, timeout=120
        )
        if res.returncode:
            raise TargetError(f"reading container memory failed: {res.stderr.strip()[-500:]}")
        return json.loads(res.stdout)


class Scirepo(Target):
    """The local repository host of the tree at `root` (its site.yml and .scirepo/)."""

    name = "scirepo"
    hub_containers = (HUB_NAME, PROXY_NAME)

    def __init__(self, root: Path, site: Path | None = None):
        self.root = root
        self.state = root / ".scirepo"
        site = site or root / "site.yml"
        if not site.exists():
            raise TargetError(f"{site} is missing: is {root} a tree where `make up` ran?")
        self.cfg = siteconfig.resolve(siteconfig.load(site))
        local = self.cfg["local"]
        self.host = local["container"]
        self.url = f"https://localhost:{local['https_port']}"
        self.cafile = str(self.state / "tls" / "ca.crt")
        self.made: list[str] = []
        self._admin: HubUser | None = None

    def on_host(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DOCKER, "exec", self.host, *cmd], capture_output=True, text=True, timeout=timeout
        )

    def setup(self) -> None:
        state = subprocess.run(
            [DOCKER, "inspect", "-f", "{{.State.Running}}", self.host],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if state != "true":
            raise TargetError(f"the host container {self.host} is not running (make up)")
        if not Path(self.cafile).exists():
            raise TargetError(f"{self.cafile} is missing: no local CA in {self.state}")
        self._wait_hub()
        self._admin = self._admin_client()

    def _wait_hub(self, deadline: float = 120) -> None:
        """Wait, with backoff, until the hub answers through nginx (a deploy may be
        restarting it)."""
        t0, delay, error = time.monotonic(), 0.5, ""
        while time.monotonic() - t0 < deadline:
            try:
                res = requests.get(f"{self.url}/hub/api", verify=self.cafile, timeout=10)
                if res.status_code == 200:
                    return
                error = f"HTTP {res.status_code}"
            except requests.RequestException as err:
                error = str(err)
            time.sleep(delay)
            delay = min(delay * 1.5, 10)
        raise TargetError(f"the hub at {self.url} did not answer within {deadline} s: {error}")

    def _admin_client(self) -> HubUser | None:
        """The first admin, logged in, to delete the benchmark's users from the hub; None
        (users stay in the hub's database) when its first password no longer works."""
        admin = self.cfg["users"]["admins"][0]
        path = self.state / "credentials" / self.host / f"admin-{admin}"
        found = re.search(r"^password: (.+)$", path.read_text(), re.M) if path.exists() else None
        if found:
            hub = self.client(admin)
            if hub.login(found.group(1)):
                return hub
        print(f"note: cannot log in as admin {admin}; benchmark users stay in the hub's "
              "database (their accounts and containers are removed)", file=sys.stderr)  # fmt: skip
        return None

    def _add(self, name: str) -> tuple[str, str]:
        res = self.on_host(
            "scirepo", "user", "add", name, "--name", f"Benchmark {name}",
            "--email", f"{name}@bench.example.org", "--json",
        )  # fmt: skip
        if res.returncode:
            raise TargetError(f"scirepo user add {name}: {res.stderr.strip()}")
        return name, json.loads(res.stdout)["password"]

    def new_users(self, n: int) -> list[tuple[str, str]]:
        names = [f"bn{secrets.token_hex(3)}" for _ in range(n)]
        self.made += names
        # A few at once: each is a short `docker exec`; useradd serialises on its lock.
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(self._add, names))

    def server_container(self, user: str) -> str:
        return f"jupyter-{user}"

    def memory(self, names: list[str]) -> dict[str, float]:
        return self._cgroup_memory([DOCKER, "exec", self.host, "python3"], names)

    def browser_args(self) -> list[str]:
        # Trust exactly the key of the host's certificate, as the browser test does.
        return [trust_certificate(self.state / "tls" / "server.crt")]

    def teardown(self) -> None:
        for name in self.made:
            if self._admin is not None:
                # Deleting the hub user stops its server first (its container is removed).
                self._admin.api("DELETE", f"/users/{name}", timeout=120)
            self.on_host("docker", "rm", "-f", self.server_container(name))
            res = self.on_host("scirepo", "user", "remove", name, "--delete-data")
            if res.returncode:
                print(f"warning: removing {name}: {res.stderr.strip()}", file=sys.stderr)
        self.made = []


class Stock(Target):
    """The baseline of bench/stock.py, started by setup and removed by teardown."""

    name = "stock"
    hub_containers = (stock.HUB,)  # the hub runs configurable-http-proxy as its child

    def __init__(self, images_json: Path, port: int = stock.DEFAULT_PORT, keep: bool = False):
        self.images_json, self.port, self.keep = images_json, port, keep
        self.cafile = False  # plain HTTP: stock JupyterHub serves no TLS by default
        self.password = ""
        self.start_s: float | None = None

    def setup(self) -> None:
        try:
            stock.build()  # not part of the start-up time: scirepo's images are built too
            t0 = time.monotonic()
            running = stock.up(self.images_json, self.port)
            self.start_s = time.monotonic() - t0
        except (SystemExit, DockerError) as err:
            stock.down()
            raise TargetError(f"the stock baseline did not start: {err}") from None
        self.url, self.password = running.url, running.password

    def teardown(self) -> None:
        if not self.keep:
            stock.down()

    def new_users(self, n: int) -> list[tuple[str, str]]:
        return [(f"bn{secrets.token_hex(3)}", self.password) for _ in range(n)]

    def server_container(self, user: str) -> str:
        return f"{stock.SERVER_PREFIX}-{user}"

    def memory(self, names: list[str]) -> dict[str, float]:
        return self._cgroup_memory([sys.executable], names)
