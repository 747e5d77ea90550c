"""JupyterHub configuration of scirepo: everything comes from the site config on the host."""

from scirepo.hub.config import ETC, apply

apply(c)  # noqa: F821 - `c` is provided by JupyterHub

# Escape hatch, loaded last: any *.py in jupyterhub_config.d on the host.
for extra in sorted((ETC / "jupyterhub_config.d").glob("*.py")):
    load_subconfig(str(extra))  # noqa: F821 - provided by traitlets
