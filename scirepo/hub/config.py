"""The hub's whole configuration, derived from the resolved site config on the host.

hub/jupyterhub_config.py calls `apply(c)`; nothing here is a second copy of a setting: the
site config (/etc/scirepo/site.json) and the image digests (/etc/scirepo/images.json) are
read as they are, and `hub.config` traitlets from the site config are applied last.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ETC = Path(os.environ.get("SCIREPO_ETC", "/etc/scirepo"))
HUB_NAME = "scirepo-hub"
PROXY_NAME = "scirepo-proxy"
NETWORK = "scirepo"  # the hub's and the proxy's network (ansible: docker_network)
# User servers run on the engine's default bridge (a container starts there 56-73 ms
# sooner than on a user-defined network, whose embedded DNS is set up in each container,
# and a spawn takes about 130 ms less: README, "Benchmarks");
# the hub and the proxy are on it too, and the hub's API is published on its gateway.
SERVER_NETWORK = "bridge"
HUB_API_URL_ENV = "SCIREPO_HUB_API_URL"
HUB_PORT = 8081
PROXY_PORT = 8000
PROXY_API_PORT = 8001


def load() -> tuple[dict, dict]:
    site = json.loads((ETC / "site.json").read_text())["scirepo"]
    images = json.loads((ETC / "images.json").read_text())["scirepo_images"]
    return site, images


def apply(c, site: dict | None = None, images: dict | None = None) -> None:
    """Set traitlets on the config object `c` of jupyterhub_config.py."""
    if site is None or images is None:
        site, images = load()
    hub, paths = site["hub"], site["paths"]

    c.JupyterHub.authenticator_class = "scirepo.hub.authenticator.ScirepoAuthenticator"
    c.JupyterHub.spawner_class = "scirepo.hub.spawner.ScirepoSpawner"
    c.JupyterHub.hub_ip = "0.0.0.0"  # noqa: S104 - inside the hub container, on its network
    c.JupyterHub.hub_port = HUB_PORT
    c.JupyterHub.hub_connect_ip = HUB_NAME
    # The proxy is its own container so that routes survive a hub restart.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://{PROXY_NAME}:{PROXY_API_PORT}"
    c.JupyterHub.cleanup_servers = False  # a hub restart leaves user servers running
    c.JupyterHub.cookie_secret_file = str(ETC / "secrets" / "jupyterhub_cookie_secret")
    c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    c.JupyterHub.allow_named_servers = hub["named_servers"]
    # Only ever served over HTTPS (nginx in front): cookies are Secure even though the hub
    # itself sees plain HTTP from the proxy.
    c.JupyterHub.tornado_settings = {
        "cookie_options": {"secure": True},
        "xsrf_cookie_kwargs": {"secure": True},
    }

    _accounts_service(c, site)
    _metrics_service(c, site)

    c.Authenticator.admin_users = set(site["users"]["admins"])
    # authd answers only for members of users.group: whoever logs in is a platform user.
    c.Authenticator.allow_all = True
    c.ScirepoAuthenticator.socket_path = paths["authd_socket"]

    refs = {name: images["stacks"][name]["ref"] for name in hub["images"]}
    manifests = {name: images["stacks"][name].get("manifest", {}) for name in hub["images"]}
    c.ScirepoSpawner.stacks = {
        name: {
            "description": site["images"]["stacks"][name]["description"],
            "packages": man.get("packages", {}),
            "headline": man.get("headline"),
            "tag": man.get("tag", ""),
            **stack_limits(site, name),
        }
        for name, man in manifests.items()
    }
    c.ScirepoSpawner.default_stack = hub["default_image"]
    c.ScirepoSpawner.paths = paths
    c.ScirepoSpawner.fsspec = site["storage"]["fsspec"]
    c.ScirepoSpawner.authd_socket = paths["authd_socket"]
    c.DockerSpawner.allowed_images = refs
    c.DockerSpawner.image = refs[hub["default_image"]]
    c.DockerSpawner.network_name = SERVER_NETWORK
    c.ScirepoSpawner.hub_api_url = hub_api_url()
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.remove = True
    c.DockerSpawner.pull_policy = "never"  # the deploy pulls every allowed image by digest
    # The default image's limits; ScirepoSpawner.start applies the chosen stack's.
    c.DockerSpawner.mem_limit = hub["mem_limit"]
    c.DockerSpawner.cpu_limit = float(hub["cpu_limit"])
    c.DockerSpawner.extra_create_kwargs = {"user": "root"}  # scirepo-start drops to the user
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 60
    cull(c, hub["cull"])

    for cls, traits in hub["config"].items():
        for key, value in traits.items():
            setattr(getattr(c, cls), key, value)


def hub_api_url() -> str:
    """The hub's API as the user servers reach it: the address its unit publishes it on
    (the default bridge's gateway), given in the environment."""
    given = os.environ.get(HUB_API_URL_ENV, "")
    url = given.rstrip("/")
    if not url.startswith("http://") or not url.endswith("/hub/api"):
        raise SystemExit(
            f"{HUB_API_URL_ENV}={given!r}: the scirepo-hub unit sets it to "
            f"http://<default bridge gateway>:{HUB_PORT}/hub/api"
        )
    return url


def with_api_url(env: dict, old: str, new: str) -> dict:
    """The variables of `env` whose value is the API URL `old` or a URL below it, with
    `new` in its place."""
    old, new = old.rstrip("/"), new.rstrip("/")
    return {
        key: new + value[len(old) :]
        for key, value in env.items()
        if isinstance(value, str) and (value == old or value.startswith(old + "/"))
    }


def stack_limits(site: dict, name: str) -> dict:
    """{mem_limit, cpu_limit} of the servers of stack `name`: its own, else the hub's."""
    hub, stack = site["hub"], site["images"]["stacks"][name]
    return {
        "mem_limit": stack.get("mem_limit", hub["mem_limit"]),
        "cpu_limit": float(stack.get("cpu_limit", hub["cpu_limit"])),
    }


CULLER = "idle-culler"


def cull(c, settings: dict) -> None:
    """Idle culling from `hub.cull`: the culler service with its role, and the kernel
    culling options of the single-user servers (command-line options of
    jupyterhub-singleuser, so no image carries them).

    Replaces what an earlier call set, so that a file in jupyterhub_config.d may call it
    again with other settings (the integration tests use short times that way).
    """
    services = [s for s in _list(c, "services") if s["name"] != CULLER]
    roles = [r for r in _list(c, "load_roles") if r["name"] != CULLER]
    args = [a for a in (c.Spawner.args if "args" in c.Spawner else []) if "KernelManager." not in a]
    if settings["enabled"]:
        services.append(
            {
                "name": CULLER,
                "command": [
                    sys.executable,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--timeout={settings['idle_timeout']}",
                    f"--cull-every={settings['every']}",
                    f"--max-age={settings['max_age']}",
                    # Stop named servers (not remove them: their names and options stay).
                    "--cull-named-servers=true",
                ],
            }
        )
        # Exactly what the culler uses: the user list, last activity, servers, and
        # stopping them (no admin:users: users are never deleted).
        roles.append(
            {
                "name": CULLER,
                "description": "Stops idle servers (jupyterhub-idle-culler)",
                "services": [CULLER],
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            }
        )
        if settings["kernel_idle_timeout"]:
            interval = max(1, min(settings["every"], settings["kernel_idle_timeout"]))
            args += [
                f"--MappingKernelManager.cull_idle_timeout={settings['kernel_idle_timeout']}",
                f"--MappingKernelManager.cull_interval={interval}",
                f"--MappingKernelManager.cull_connected={settings['kernel_cull_connected']}",
            ]
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    c.Spawner.args = args


def _list(c, trait: str) -> list:
    """c.JupyterHub.<trait> as set so far (a list), or []."""
    return list(getattr(c.JupyterHub, trait)) if trait in c.JupyterHub else []


def _accounts_service(c, site: dict) -> None:
    """Register the accounts service (scirepo.accounts.web): an OAuth client, so that hub
    admins reach its review pages with their hub login, and an API token allowed to stop
    servers and delete hub users (offboarding)."""
    token_file = ETC / "secrets" / "accounts_hub_token"
    if not site["accounts"]["enabled"] or not token_file.exists():
        return
    c.JupyterHub.services = [
        *_list(c, "services"),
        {
            "name": "accounts",
            "api_token": token_file.read_text().strip(),
            "oauth_client_id": "service-accounts",
            "oauth_redirect_uri": "/accounts/oauth_callback",
            "oauth_no_confirm": True,
        },
    ]
    c.JupyterHub.load_roles = [
        *_list(c, "load_roles"),
        {
            "name": "accounts-service",
            "services": ["accounts"],
            "scopes": ["list:users", "read:users", "admin:users", "admin:servers"],
        },
    ]
    # An expired (temporary) password sends the user to the accounts pages to change it.
    c.ScirepoAuthenticator.password_change_url = "/accounts/password"  # noqa: S105


def _metrics_service(c, site: dict) -> None:
    """Register the metrics scraper (Prometheus) as the hub service `prometheus`, whose token
    may do nothing but read /hub/metrics. The metrics answer to nobody else."""
    c.JupyterHub.authenticate_prometheus = True
    token_file = ETC / "secrets" / "prometheus_hub_token"
    if not site.get("metrics", {}).get("enabled") or not token_file.exists():
        return
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    c.JupyterHub.services = [
        *services,
        {"name": "prometheus", "api_token": token_file.read_text().strip()},
    ]
    c.JupyterHub.load_roles = [
        *roles,
        {"name": "metrics-scraper", "services": ["prometheus"], "scopes": ["read:metrics"]},
    ]
