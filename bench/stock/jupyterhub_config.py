"""Configuration of the stock baseline hub of the benchmarks (bench/stock.py runs it).

JupyterHub and DockerSpawner with their defaults, except for what a hub in a container
needs to start scirepo's notebook image at all. Each line below is a departure from the
defaults, and the reason for it; bench/stock.py passes the values in the environment:

- SharedPasswordAuthenticator with one generated password: stock has no PAM in a
  container, and the benchmark needs passwords it knows (DummyAuthenticator's password is
  deprecated since JupyterHub 5.3; this is its successor). Anyone may log in with it.
- hub_ip/hub_connect_ip and DockerSpawner.network_name: the hub runs in a container, so
  the servers it starts must reach it by name on a user-defined network (DockerSpawner's
  documented setup for a containerised hub; use_internal_ip follows from network_name).
- DockerSpawner.image: scirepo's `base` image, by digest, the image scirepo spawns.
- DockerSpawner.cmd: jupyterhub-singleuser, JupyterHub's own single-user server, installed in
  the image at the hub's version (the image's own command is scirepo-singleuser).
- DockerSpawner.prefix: container names start with scirepo-stock- so that bench/stock.py
  removes exactly its own containers.
- DockerSpawner.environment NB_USER/NB_UID/NB_HOME: scirepo's images start as root and
  need them to drop to a user (images/base/scirepo-start). Every stock server runs as uid
  1000 with HOME=/tmp of its own container: stock mounts no home directory.

Everything else is default: the hub starts configurable-http-proxy as its child, the hub's
database is SQLite in the working directory, containers are kept when stopped
(DockerSpawner.remove is False), no memory or CPU limits, no idle culler, plain HTTP.
"""

import os

c = get_config()  # noqa: F821 - provided by JupyterHub

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["STOCK_PASSWORD"]
c.Authenticator.allow_all = True

c.JupyterHub.spawner_class = "docker"
c.JupyterHub.hub_ip = "0.0.0.0"  # noqa: S104 - inside the hub container, on its network
c.JupyterHub.hub_connect_ip = os.environ["STOCK_HUB_NAME"]
c.DockerSpawner.network_name = os.environ["STOCK_NETWORK"]
c.DockerSpawner.image = os.environ["STOCK_IMAGE"]
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.prefix = os.environ["STOCK_PREFIX"]
c.DockerSpawner.environment = {
    "NB_USER": lambda spawner: spawner.user.name,
    "NB_UID": "1000",
    "NB_HOME": "/tmp",
}
