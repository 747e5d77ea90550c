"""Per-user containers that belong to the user.

The container starts as root only long enough for the image's entrypoint (scirepo-start)
to create the user's passwd entry, then runs as the user's uid/gid with no capabilities and
no_new_privs. Everything is mounted with `type=bind` mounts, which fail when the source is
missing instead of letting Docker create a root-owned directory (the classic DockerSpawner
permission bug): accounts are provisioned before login, never at spawn.
"""

from __future__ import annotations

import asyncio
import html
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from dockerspawner import DockerSpawner
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Dict, Float, Integer, Unicode, default

from scirepo.authd import query
from scirepo.hub.config import with_api_url
from scirepo.storage import notebook_fs
from scirepo.storage.areas import container_mounts


class ScirepoSpawner(DockerSpawner):
    """DockerSpawner that looks the user up on the host and mounts the data areas."""

    authd_socket = Unicode("/run/scirepo/authd.sock", config=True)
    authd_timeout = Float(15.0, config=True)
    paths = Dict(config=True, help="The `paths` section of the resolved site config.")
    fsspec = Dict(
        config=True,
        help="`storage.fsspec` of the site config: where the URL schemes of scirepo-fs "
        "(sites://, workspace://, ...) find the data areas.",
    )
    stacks = Dict(
        config=True,
        help="Offered images by name: {description, packages: {name: version}, tag, date}, "
        "from the site config and the images' manifests; the keys of allowed_images.",
    )
    default_stack = Unicode(config=True, help="Name of the image preselected in the form.")
    hub_api_url = Unicode(
        "",
        config=True,
        help="The hub's API as the servers reach it (they are on another network than the "
        "hub's name): replaces the hub's own API URL in the servers' environment.",
    )
    docker_threads = Integer(
        8,
        config=True,
        help="Threads for the Docker API calls of all servers together. DockerSpawner has "
        "one, so that every container's create, start and stop waits for all the others': "
        "ten users starting at once would wait for ten container starts in a row.",
    )
    _docker_pool: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """One pool for the Docker calls of every ScirepoSpawner (DockerSpawner.docker
        runs each call in `executor`; the Docker client is thread-safe)."""
        cls = ScirepoSpawner
        if cls._docker_pool is None:
            cls._docker_pool = ThreadPoolExecutor(
                self.docker_threads, thread_name_prefix="docker-api"
            )
        return cls._docker_pool

    ready_interval = Float(
        0.05,
        config=True,
        help="Seconds between two checks whether a starting server answers. The hub's own "
        "wait after start() backs off exponentially with jitter (up to 5 s between checks); "
        "start() returns only once the server answers, so the hub's first check succeeds.",
    )

    def _chosen_stack(self) -> str:
        """Name of the stack this start runs: the user's choice, else the image the
        spawner has (a former choice or the default)."""
        chosen = self.user_options.get("image")
        if chosen:
            return chosen
        allowed = self._get_allowed_images()
        if isinstance(allowed, dict):
            for name, ref in allowed.items():
                if ref == self.image:
                    return name
        return self.default_stack

    def _apply_limits(self) -> None:
        """The chosen stack's memory and CPU limits (`images.stacks.<name>`, else the
        hub's). Memory plus swap is capped at the memory limit: a server never swaps
        the host, it goes over its limit and the kernel's OOM killer stops its largest
        process (a kernel: the server restarts it)."""
        limits = self.stacks.get(self._chosen_stack(), {})
        if "mem_limit" in limits:
            self.mem_limit = limits["mem_limit"]
        if "cpu_limit" in limits:
            self.cpu_limit = limits["cpu_limit"]
        if self.mem_limit is not None and isinstance(self.extra_host_config, dict):
            self.extra_host_config = {**self.extra_host_config, "memswap_limit": self.mem_limit}

    @default("options_form")
    def _scirepo_options_form(self):
        """A choice of stacks, each with its description and key package versions."""
        if len(self.stacks) <= 1:
            return ""
        cards = []
        for name, info in self.stacks.items():
            packages = info.get("packages", {})
            # The headline package first, then the others by name.
            order = sorted(packages, key=lambda p: (p != info.get("headline"), p))
            versions = ", ".join(
                f"{html.escape(pkg)} {html.escape(packages[pkg])}" for pkg in order
            )
            checked = " checked" if name == self.default_stack else ""
            cards.append(
                f'<label class="scirepo-stack list-group-item" data-stack="{html.escape(name)}">'
                f'<input type="radio" name="image" value="{html.escape(name)}"{checked}> '
                f"<strong>{html.escape(name)}</strong>"
                f'<div class="scirepo-description">{html.escape(info.get("description", ""))}'
                f"</div>"
                f'<div class="scirepo-versions"><small>{versions}</small></div>'
                f'<div class="scirepo-tag"><small>{html.escape(info.get("tag", ""))}</small>'
                f"</div></label>"
            )
        return (
            "<p>Choose the software stack of this server:</p>"
            f'<div class="list-group scirepo-stacks">{"".join(cards)}</div>'
        )

    async def _host_user(self) -> dict:
        answer = await asyncio.to_thread(
            query,
            self.authd_socket,
            {"op": "lookup", "username": self.user.name},
            self.authd_timeout,
        )
        if not answer.get("ok"):
            raise RuntimeError(
                f"user {self.user.name} is not a platform user on this host: {answer.get('error')}"
            )
        return answer["user"]

    def _mounts(self, user: dict) -> list[dict]:
        return container_mounts(self.paths, user["name"], user["home"])

    async def check_allowed(self, image):
        """DockerSpawner's refusal of an unlisted image, which also forgets the choice.

        JupyterHub stores a start's options as the defaults of the next start; a refused
        image must not make every later start (with no options) fail the same way.
        """
        try:
            return await super().check_allowed(image)
        except web.HTTPError:
            self.user_options = {}
            self.orm_spawner.user_options = {}
            session = object_session(self.orm_spawner)
            if session is not None:
                session.commit()
            raise

    def get_env(self) -> dict:
        """DockerSpawner's environment, with the hub's API (JUPYTERHUB_API_URL and the
        URLs below it, such as JUPYTERHUB_ACTIVITY_URL) at `hub_api_url`."""
        env = super().get_env()
        if self.hub_api_url:
            env.update(with_api_url(env, self.hub.api_url, self.hub_api_url))
        return env

    async def start(self):
        user = await self._host_user()
        if user["uid"] == 0:
            raise RuntimeError("refusing to start a server for uid 0")
        self.mounts = self._mounts(user) + notebook_fs.mounts(self.fsspec, user["name"])
        groups = [
            f"{g}:{gid}"
            for g, gid in zip(user["groups"], user["group_ids"], strict=True)
            if gid != user["gid"]
        ]
        self.environment.update(
            {
                "NB_USER": user["name"],
                "NB_UID": str(user["uid"]),
                "NB_GID": str(user["gid"]),
                "NB_GROUPS": ",".join(groups),
                "NB_HOME": user["home"],
                # scirepo-fs: where sites://, workspace://, ... are (the user is NB_USER).
                **notebook_fs.environment(self.paths, self.fsspec),
            }
        )
        self.notebook_dir = user["home"]
        self._apply_limits()
        # Not auto-removed: Docker 20.10 deletes auto-removed containers when the engine
        # restarts, live-restore or not (moby/moby#46308), and a deploy may restart it.
        # `remove` still deletes the container when the server stops (through the API),
        # and a container left by a crash is removed at the next start.
        self.extra_host_config = {**self.extra_host_config, "auto_remove": False}
        ip, port = await super().start()
        await self._wait_ready(ip, port)
        return ip, port

    async def _wait_ready(self, ip: str, port: int) -> None:
        """Return once the server answers its API (any status below 500), checking every
        `ready_interval` seconds; fail naming the cause if its container stops first or it
        does not answer within `http_timeout`."""
        url = f"http://{ip}:{port}{self.server.base_url}api"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        next_poll = loop.time() + 1.0
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(url, allow_redirects=False) as resp:
                        if resp.status < 500:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass  # not listening yet
                now = loop.time()
                if now >= next_poll:
                    next_poll = now + 1.0
                    status = await self.poll()
                    if status is not None:
                        raise _start_failed(
                            f"the server's container {self.container_name} stopped "
                            f"({status}) before its server answered; its log: "
                            f"docker logs {self.container_name}"
                        )
                if now >= deadline:
                    raise _start_failed(
                        f"the server in {self.container_name} did not answer at {url} "
                        f"within {self.http_timeout:g} s"
                    )
                await asyncio.sleep(self.ready_interval)


def _start_failed(message: str) -> web.HTTPError:
    """A failed start whose message the hub shows the user (API and spawn page)."""
    err = web.HTTPError(500, "%s", message)
    err.jupyterhub_message = message
    return err
