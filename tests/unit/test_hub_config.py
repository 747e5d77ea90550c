"""The hub's configuration derived from a site config (scirepo.hub.config.apply): the idle
culler service and its role, kernel culling in the servers, and per-image limits.

traitlets is not in the development venv: `Config` below has the two behaviours of
traitlets' Config that apply() relies on (sections made on first access, `in`).
"""

from __future__ import annotations

import os
import sys
from unittest import mock

import pytest

from scirepo import config
from scirepo.hub import config as hubconfig

API = "http://172.17.0.1:8081/hub/api"


@pytest.fixture(autouse=True)
def etc(tmp_path, monkeypatch):
    """An empty /etc/scirepo: no accounts service token."""
    monkeypatch.setattr(hubconfig, "ETC", tmp_path)
    return tmp_path


class Section(dict):
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


class Config(dict):
    def __getattr__(self, name: str) -> Section:
        return self.setdefault(name, Section())


def hub_config(site: dict, api_url: str | None = API) -> Config:
    """The config apply() makes of `site`, with the hub unit's SCIREPO_HUB_API_URL set to
    `api_url` (None: not set)."""
    site = config.resolve(config.validate({"site": {"name": "x"}, **site}))
    images = {
        "stacks": {
            name: {"ref": f"reg/{name}@sha256:{i:064x}"}
            for i, name in enumerate(site["images"]["stacks"])
        }
    }
    c = Config()
    env = {k: v for k, v in os.environ.items() if k != hubconfig.HUB_API_URL_ENV}
    if api_url is not None:
        env[hubconfig.HUB_API_URL_ENV] = api_url
    with mock.patch.dict(os.environ, env, clear=True):
        hubconfig.apply(c, site, images)
    return c


TWO_STACKS = {
    "hub": {"images": ["base", "small"], "mem_limit": "3G", "cpu_limit": 1.5},
    "images": {"stacks": {"base": {}, "small": {"mem_limit": "512M", "cpu_limit": 0.5}}},
}


def test_culler_is_a_service_with_exactly_its_scopes():
    c = hub_config({})
    (culler,) = [s for s in c.JupyterHub.services if s["name"] == "idle-culler"]
    assert culler["command"] == [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=3600",
        "--cull-every=300",
        "--max-age=0",
        "--cull-named-servers=true",
    ]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler"]
    assert role["services"] == ["idle-culler"]
    assert sorted(role["scopes"]) == [
        "delete:servers",
        "list:users",
        "read:servers",
        "read:users:activity",
    ]


def test_kernel_culling_options_go_to_the_servers():
    c = hub_config({"hub": {"cull": {"kernel_idle_timeout": 600, "every": 60}}})
    assert c.Spawner.args == [
        "--MappingKernelManager.cull_idle_timeout=600",
        "--MappingKernelManager.cull_interval=60",
        "--MappingKernelManager.cull_connected=True",
    ]
    c = hub_config({"hub": {"cull": {"kernel_idle_timeout": 20, "kernel_cull_connected": False}}})
    assert c.Spawner.args == [
        "--MappingKernelManager.cull_idle_timeout=20",
        "--MappingKernelManager.cull_interval=20",
        "--MappingKernelManager.cull_connected=False",
    ]
    assert hub_config({"hub": {"cull": {"kernel_idle_timeout": 0}}}).Spawner.args == []


def test_culling_off_registers_nothing():
    c = hub_config({"hub": {"cull": {"enabled": False}}})
    assert [s["name"] for s in c.JupyterHub.services] == []
    assert c.JupyterHub.load_roles == []
    assert c.Spawner.args == []


def test_cull_called_again_replaces_its_own_settings(etc):
    """A jupyterhub_config.d file may call cull() again (the integration tests do): one
    culler, one role, one set of kernel options; other services and roles stay."""
    token = etc / "secrets" / "accounts_hub_token"
    token.parent.mkdir()
    token.write_text("t0ken\n")
    c = hub_config({})
    c.Spawner.args = [*c.Spawner.args, "--ServerApp.other=1"]
    settings = config.validate({"site": {"name": "x"}})["hub"]["cull"]
    hubconfig.cull(c, {**settings, "idle_timeout": 20, "every": 5, "kernel_idle_timeout": 10})
    assert [s["name"] for s in c.JupyterHub.services] == ["accounts", "idle-culler"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["accounts-service", "idle-culler"]
    assert "--timeout=20" in c.JupyterHub.services[1]["command"]
    assert c.Spawner.args == [
        "--ServerApp.other=1",
        "--MappingKernelManager.cull_idle_timeout=10",
        "--MappingKernelManager.cull_interval=5",
        "--MappingKernelManager.cull_connected=True",
    ]


def test_each_stack_gets_its_own_limits_or_the_hubs():
    c = hub_config(TWO_STACKS)
    stacks = c.ScirepoSpawner.stacks
    assert (stacks["base"]["mem_limit"], stacks["base"]["cpu_limit"]) == ("3G", 1.5)
    assert (stacks["small"]["mem_limit"], stacks["small"]["cpu_limit"]) == ("512M", 0.5)
    # The spawner's own defaults are the hub's (the default image's, when it has none).
    assert (c.DockerSpawner.mem_limit, c.DockerSpawner.cpu_limit) == ("3G", 1.5)


def test_stack_limits_are_checked_by_the_schema(tmp_path, run_cli):
    path = tmp_path / "site.yml"
    path.write_text("site: {name: x}\nimages: {stacks: {base: {mem_limit: 2 GB, cpu_limit: 0}}}\n")
    code, _, err = run_cli("config", "check", path)
    assert code == 2
    assert "images.stacks.base.mem_limit" in err and "images.stacks.base.cpu_limit" in err


def test_servers_run_on_the_default_bridge_and_reach_the_hub_at_its_published_api():
    c = hub_config({})
    assert c.DockerSpawner.network_name == "bridge"
    assert c.DockerSpawner.use_internal_ip is True
    assert c.ScirepoSpawner.hub_api_url == API
    # The proxy and the hub itself still meet by name on the platform network.
    assert c.JupyterHub.hub_connect_ip == "scirepo-hub"


@pytest.mark.parametrize("value", [None, "", "scirepo-hub:8081", "http://172.17.0.1:8081/"])
def test_a_missing_or_wrong_hub_api_url_stops_the_hub_naming_it(value):
    with pytest.raises(SystemExit, match=f"{hubconfig.HUB_API_URL_ENV}=.*/hub/api"):
        hub_config({}, api_url=value)


def test_the_servers_environment_names_the_published_api():
    env = {
        "JUPYTERHUB_API_URL": "http://scirepo-hub:8081/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": "http://scirepo-hub:8081/hub/api/users/jdoe/activity",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/jdoe/",
        "JUPYTERHUB_BASE_URL": "/",
        "ELSEWHERE": "http://scirepo-hub:8081/hub/apiary",
        "NB_UID": 1000,
    }
    assert hubconfig.with_api_url(env, "http://scirepo-hub:8081/hub/api/", API + "/") == {
        "JUPYTERHUB_API_URL": API,
        "JUPYTERHUB_ACTIVITY_URL": API + "/users/jdoe/activity",
    }
