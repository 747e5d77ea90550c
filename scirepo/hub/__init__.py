"""JupyterHub plug-ins of scirepo: host PAM login through authd, and per-user containers
that run as the user's own uid with the data areas mounted (ScirepoSpawner)."""
