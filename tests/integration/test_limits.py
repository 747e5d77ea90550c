"""Limits and culling on the real host: each server runs with its stack's memory and CPU
limits; a kernel that goes over the memory limit is killed by the OOM killer and restarted
while its server, the hub and other users' servers carry on; idle servers (default and
named) and idle kernels are culled.

The culling test shortens the times with a file in /etc/scirepo/jupyterhub_config.d (the
hub's documented escape hatch) and restarts the hub; the file is removed and the hub
restarted again at the end of the module.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import websocket

from scirepo.hub.config import stack_limits
from scirepo.hubclient import HubUser

from .conftest import on_host

pytestmark = pytest.mark.host

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def nbytes(limit: str) -> int:
    unit = limit[-1].lower() if limit[-1].isalpha() else ""
    return int(limit.rstrip("kKmMgG")) * UNITS[unit]


def container(name: str, server_name: str = "") -> str:
    return f"jupyter-{name}" + (f"--{server_name}" if server_name else "")


def inspect(cfg: dict, name: str) -> dict:
    res = on_host(cfg, "docker", "inspect", name)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]


def oom_kills(cfg: dict, cid: str) -> int:
    """OOM kills in the container's memory cgroup (cgroup v1 or v2)."""
    for path, key in (
        (f"/sys/fs/cgroup/memory/docker/{cid}/memory.oom_control", "oom_kill"),
        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.events", "oom_kill"),
        (f"/sys/fs/cgroup/docker/{cid}/memory.events", "oom_kill"),
    ):
        res = on_host(cfg, "cat", path)
        if res.returncode == 0:
            counts = dict(line.split() for line in res.stdout.splitlines())
            return int(counts[key])
    raise AssertionError(f"no memory cgroup found for container {cid[:12]}")


class Kernel:
    """A kernel of a user's server, kept open over one websocket (as a notebook tab)."""

    def __init__(self, hub: HubUser, server_name: str = ""):
        self.hub, self.server_name = hub, server_name
        res = hub.server("POST", "api/kernels", server_name=server_name, json={"name": "python3"})
        assert res.status_code == 201, res.text
        self.id = res.json()["id"]
        self.connect()

    def connect(self) -> None:
        """(Re)open the kernel's websocket, as JupyterLab does after a kernel restart."""
        ws_url = self.hub.url.replace("https://", "wss://")
        self.ws = websocket.create_connection(
            f"{ws_url}{self.hub._server_path(self.server_name)}api/kernels/{self.id}/channels",
            header=[f"Authorization: token {self.hub.token}"],
            sslopt={"ca_certs": self.hub.cafile},
            timeout=120,
        )
        self._wait_for_iopub()

    def _send(self, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": self.hub.name,
            "session": uuid.uuid4().hex,
            "version": "5.3",
        }
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                 "channel": "shell", "content": content}))  # fmt: skip
        return msg_id

    def _recv(self, seconds: float) -> dict | None:
        """The next message, or None if none came within `seconds`. A read waits 5 s at
        the most: the server's pings would keep a longer timeout from ever expiring."""
        self.ws.settimeout(min(5.0, seconds))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def _wait_for_iopub(self, timeout: float = 30) -> None:
        """Ask for kernel info until its 'idle' comes back on iopub, as JupyterLab waits
        for kernel info before it runs a cell: the server subscribes to the kernel's
        iopub as the websocket opens, and output published before that subscription is
        in place is lost (the server's own nudge is skipped while it thinks the kernel
        is busy, as it may right after a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = self._send("kernel_info_request", {})
            until = min(deadline, time.monotonic() + 2)
            while time.monotonic() < until:
                msg = self._recv(max(0.1, until - time.monotonic()))
                if msg is None:
                    break
                if (
                    msg.get("channel") == "iopub"
                    and msg["msg_type"] == "status"
                    and msg.get("parent_header", {}).get("msg_id") == msg_id
                    and msg["content"]["execution_state"] == "idle"
                ):
                    return
        raise AssertionError(f"kernel {self.id}: no iopub status in {timeout} s")

    def execute(self, code: str, timeout: float = 60) -> dict:
        """Run `code`; return its stdout, reply status, and the kernel's state changes
        that came without a parent (the server's 'restarting'/'dead' notices)."""
        content = {"code": code, "silent": False, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False}  # fmt: skip
        msg_id = self._send("execute_request", content)
        out = {"stdout": "", "status": None, "notices": [], "seconds": 0.0}
        t0 = time.monotonic()
        idle = False
        while not (out["status"] and idle):
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise AssertionError(f"no answer in {timeout} s: {out}")
            msg = self._recv(left)
            if msg is None:
                continue
            kind, body = msg["msg_type"], msg["content"]
            mine = msg.get("parent_header", {}).get("msg_id") == msg_id
            if kind == "status" and not mine and body["execution_state"] in ("restarting", "dead"):
                out["notices"].append(body["execution_state"])
                break
            if not mine:
                continue
            if kind == "stream" and body["name"] == "stdout":
                out["stdout"] += body["text"]
            elif kind == "execute_reply":
                out["status"] = body["status"]
            elif kind == "status" and body["execution_state"] == "idle":
                idle = True
        out["seconds"] = time.monotonic() - t0
        return out

    def state(self) -> str:
        res = self.hub.server("GET", f"api/kernels/{self.id}", server_name=self.server_name)
        return res.json()["execution_state"] if res.status_code == 200 else str(res.status_code)

    def close(self) -> None:
        self.ws.close()
        self.hub.server("DELETE", f"api/kernels/{self.id}", server_name=self.server_name)


@pytest.fixture(scope="module")
def small_stack(cfg) -> tuple[str, dict]:
    """The offered stack with the smallest memory limit (the cheapest to fill)."""
    name = min(cfg["hub"]["images"], key=lambda n: nbytes(stack_limits(cfg, n)["mem_limit"]))
    return name, stack_limits(cfg, name)


@pytest.fixture(scope="module")
def hungry(users, cfg, small_stack):
    """A user whose server runs the smallest-limit stack."""
    name, _, hub = users.logged_in("m")
    hub.start_server(image=small_stack[0])
    yield hub
    hub.stop_server()


@pytest.fixture(scope="module")
def neighbour(users):
    """Another user with a server on the default stack and a kernel holding a variable."""
    _, _, hub = users.logged_in("n")
    hub.start_server()
    kernel = Kernel(hub)
    assert kernel.execute("x = 41")["status"] == "ok"
    yield hub, kernel
    kernel.close()
    hub.stop_server()


def test_servers_run_with_their_stacks_limits(cfg, hungry, neighbour, small_stack):
    for hub, stack in ((hungry, small_stack[0]), (neighbour[0], cfg["hub"]["default_image"])):
        limits = stack_limits(cfg, stack)
        host_config = inspect(cfg, container(hub.name))["HostConfig"]
        assert host_config["Memory"] == nbytes(limits["mem_limit"]), stack
        # No swap on top: memory + swap is the memory limit.
        assert host_config["MemorySwap"] == host_config["Memory"]
        assert host_config["CpuQuota"] == int(limits["cpu_limit"] * host_config["CpuPeriod"])


def test_kernel_over_the_memory_limit_is_killed_and_restarted(cfg, host, hungry, neighbour):
    """The OOM killer of the container's cgroup kills the kernel (the largest process)
    as it goes over the limit; the server survives and restarts the kernel ('restarting'
    on the notebook's websocket, JupyterLab's "kernel restarting" dialog); the hub and
    the other user's server and kernel are untouched."""
    other, other_kernel = neighbour
    box = inspect(cfg, container(hungry.name))
    other_box = inspect(cfg, container(other.name))
    kills = oom_kills(cfg, box["Id"])
    limit_mib = box["HostConfig"]["Memory"] >> 20
    kernel = Kernel(hungry)
    try:
        out = kernel.execute(
            "chunks = []\n"
            f"while len(chunks) < {limit_mib // 64 + 16}:\n"
            "    chunks.append(b'x' * (64 << 20))\n"
            "    print(len(chunks) * 64, flush=True)\n",
            timeout=120,
        )
        print(f"killed after {out['seconds']:.1f} s at {out['stdout'].split()[-1:]} MiB")
        assert out["notices"] == ["restarting"], out
        assert out["status"] is None  # never finished
        reached = int(out["stdout"].split()[-1])
        assert limit_mib * 0.7 < reached <= limit_mib, out["stdout"][-200:]
        assert oom_kills(cfg, box["Id"]) == kills + 1
        # The same container is running, the server answers and the kernel is back, empty.
        after = inspect(cfg, container(hungry.name))
        assert (after["Id"], after["State"]["Status"]) == (box["Id"], "running")
        assert after["State"]["StartedAt"] == box["State"]["StartedAt"]
        assert not after["State"]["OOMKilled"]
        assert hungry.server("GET", "api/status").status_code == 200
        deadline = time.monotonic() + 30
        while kernel.state() not in ("idle", "busy") and time.monotonic() < deadline:
            time.sleep(0.5)
        kernel.ws.close()
        kernel.connect()
        again = kernel.execute("print('chunks' in dir())")
        assert (again["status"], again["stdout"]) == ("ok", "False\n")
        # The server's log names the restart.
        logs = on_host(cfg, "docker", "logs", "--since", "5m", container(hungry.name)).stderr
        assert f"kernel {kernel.id} restarted" in logs
    finally:
        kernel.close()
    # Nobody else noticed: same container, the same kernel with its variable, the hub.
    assert inspect(cfg, container(other.name))["State"] == other_box["State"]
    assert other_kernel.execute("print(x + 1)")["stdout"] == "42\n"
    assert other.api("GET", f"/users/{other.name}").status_code == 200
    assert host.service("scirepo-hub").is_running


def test_culler_runs_with_the_site_settings(cfg):
    """jupyterhub-idle-culler runs as the hub's service with hub.cull's times."""
    res = on_host(
        cfg,
        "docker",
        "exec",
        "scirepo-hub",
        "python3",
        "-c",
        "import pathlib\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*/cmdline'):\n"
        "    try: print(p.read_bytes().replace(b'\\0', b' ').decode())\n"
        "    except OSError: pass\n",
    )
    culler = [line for line in res.stdout.splitlines() if "jupyterhub_idle_culler" in line]
    cull = cfg["hub"]["cull"]
    if not cull["enabled"]:
        assert culler == []
        return
    assert len(culler) == 1, res.stdout
    assert f"--timeout={cull['idle_timeout']} --cull-every={cull['every']}" in culler[0]


SHORT = {"idle_timeout": 30, "every": 5, "kernel_idle_timeout": 10}
ACTIVITY_INTERVAL = 5  # seconds between a server's activity reports to the hub
DROP_IN = "99-test-limits-cull.py"


def restart_hub(cfg: dict, hub: HubUser) -> float:
    t0 = time.monotonic()
    assert on_host(cfg, "systemctl", "restart", "scirepo-hub").returncode == 0
    while time.monotonic() - t0 < 90:
        try:
            if hub.api("GET", "/", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("the hub did not come back in 90 s")


@pytest.fixture(scope="module")
def short_culling(cfg, users):
    """The hub restarted with SHORT culling times; back to the site's at the end."""
    path = f"{cfg['paths']['etc']}/jupyterhub_config.d/{DROP_IN}"
    text = (
        "# Written by tests/integration/test_limits.py; removed when it ends.\n"
        "from scirepo.hub.config import cull, load\n\n"
        f"cull(c, {{**load()[0]['hub']['cull'], 'enabled': True, **{SHORT!r}}})\n"
        "c.Spawner.environment.update("
        f"{{'JUPYTERHUB_ACTIVITY_INTERVAL': '{ACTIVITY_INTERVAL}'}})\n"
    )
    assert on_host(cfg, "tee", path, input=text).returncode == 0
    _, _, hub = users.logged_in("c")
    try:
        print(f"hub restarted in {restart_hub(cfg, hub):.1f} s")
        yield hub
    finally:
        on_host(cfg, "rm", "-f", path)
        print(f"hub restarted in {restart_hub(cfg, hub):.1f} s")


def test_idle_servers_and_kernels_are_culled(cfg, short_culling):
    """With a 30 s idle timeout, a default and a named server that nobody uses are stopped
    (and their containers removed) 30-45 s after they started; a kernel left idle
    inside is shut down after 10 s, while its server still runs."""
    hub = short_culling
    names = ["", "named"] if cfg["hub"]["named_servers"] else [""]
    started = {}
    for server_name in names:
        # The hub's last activity of a new server is between its request and its start.
        started[server_name] = time.monotonic()
        hub.start_server(server_name=server_name)
    args = inspect(cfg, container(hub.name))["Args"]
    assert "--MappingKernelManager.cull_idle_timeout=10" in args
    assert hub.server("POST", "api/kernels", json={"name": "python3"}).status_code == 201
    t_kernel = time.monotonic()
    culled: dict[str, float] = {}
    kernel_gone = None
    while len(culled) < len(names) and time.monotonic() - t_kernel < 90:
        servers = hub.api("GET", f"/users/{hub.name}").json()["servers"]
        for server_name in names:
            if server_name not in servers and server_name not in culled:
                culled[server_name] = time.monotonic() - started[server_name]
        if kernel_gone is None and "" not in culled:
            # api/status, not api/kernels: a look that is not activity (the server reports
            # its activity to the hub, and this loop must not keep it alive).
            res = hub.server("GET", "api/status")
            if res.status_code == 200 and res.json()["kernels"] == 0:
                kernel_gone = time.monotonic() - t_kernel
        time.sleep(1)
    print(f"kernel culled after {kernel_gone} s, servers after {culled}")
    assert kernel_gone is not None and 10 <= kernel_gone <= 10 + 5 + 5
    for server_name in names:
        assert server_name in culled, f"server {server_name!r} still running"
        assert 30 <= culled[server_name] <= 30 + 5 + 15, culled
        res = on_host(cfg, "docker", "inspect", container(hub.name, server_name))
        assert res.returncode != 0  # container removed
    # A culled server starts again on request (files and named server entry are kept).
    hub.start_server(server_name=names[-1])
    hub.stop_server(server_name=names[-1])


def test_a_server_in_use_reports_activity_and_is_not_culled(short_culling):
    """The server posts its last activity to the hub (scirepo-singleuser): used every few
    seconds for longer than the 30 s idle timeout, it is not culled, and the hub's last
    activity of it moves on. (The proxy's own record reaches the hub only every 5 min.)"""
    hub = short_culling
    hub.start_server()
    try:
        first = hub.api("GET", f"/users/{hub.name}").json()["servers"][""]["last_activity"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < SHORT["idle_timeout"] + 2 * SHORT["every"] + 5:
            assert hub.server("GET", "api/contents").status_code == 200, "server culled"
            time.sleep(3)
        servers = hub.api("GET", f"/users/{hub.name}").json()["servers"]
        assert "" in servers, "culled while in use"
        assert servers[""]["last_activity"] > first
    finally:
        hub.stop_server()
