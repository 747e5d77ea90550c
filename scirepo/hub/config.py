"""The hub's whole configuration, derived from the resolved site config on the host.

hub/jupyterhub_config.py calls `apply(c)`; nothing here is a second copy of a setting: the
site config (/etc/scirepo/site.json) and the image digests (/etc/scirepo/images.json) are
read as they are, and `hub.config` traitlets from the site config are applied last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ETC = Path(os.environ.get("SCIREPO_ETC", "/etc/scirepo"))
HUB_NAME = "scirepo-hub"
PROXY_NAME = "scirepo-proxy"
NETWORK = "scirepo"
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
        }
        for name, man in manifests.items()
    }
    c.ScirepoSpawner.default_stack = hub["default_image"]
    c.ScirepoSpawner.paths = paths
    c.ScirepoSpawner.authd_socket = paths["authd_socket"]
    c.DockerSpawner.allowed_images = refs
    c.DockerSpawner.image = refs[hub["default_image"]]
    c.DockerSpawner.network_name = NETWORK
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.remove = True
    c.DockerSpawner.pull_policy = "never"  # the deploy pulls every allowed image by digest
    c.DockerSpawner.mem_limit = hub["mem_limit"]
    c.DockerSpawner.cpu_limit = float(hub["cpu_limit"])
    c.DockerSpawner.extra_create_kwargs = {"user": "root"}  # scirepo-start drops to the user
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 60

    for cls, traits in hub["config"].items():
        for key, value in traits.items():
            setattr(getattr(c, cls), key, value)
