"""The URL schemes of the data areas and the file systems behind them.

Each scheme is a `DirFileSystem` rooted at one area and wrapping the site's backend: the
local file system (the areas are mounted in the container at their host paths) or an
S3-compatible bucket through s3fs. Where the areas are comes from the environment the hub
sets in every user server (`SCIREPO_FS`, JSON, see `load_mapping`); the user from `NB_USER`
(the login name outside a server).

The mapping is read when a file system is made, and fsspec does not cache these file
systems (`cachable = False`): a new `SCIREPO_FS` takes effect for the next URL opened.
"""

from __future__ import annotations

import configparser
import getpass
import json
import os
import re

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

ENV = "SCIREPO_FS"
USER_ENV = "NB_USER"
BACKENDS = ("local", "s3")
# A user, group or site name: one path component that a Unix account may carry.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
GLOB = re.compile(r"[*?[]")  # a path component that is a glob pattern (fs.glob)


class AreaError(ValueError):
    """A URL or a mapping that names no usable area (the message says why)."""


def load_mapping(environ=None) -> dict:
    """The area mapping from `SCIREPO_FS`, checked.

    {"backend": "local" | "s3",
     "areas": {"data": ROOT, "sites": [NAME, ...], "software": ROOT, "workspaces": ROOT,
               "upload": ROOT, "public": ROOT, "groups": ROOT, "scratch": ROOT},
     "s3": {"endpoint_url": URL, "region": NAME, "credentials_file": PATH}}

    A ROOT is a directory (local) or `bucket/key-prefix` (s3). Any area may be missing: its
    scheme then says that this site has no such area. `s3` is only read with backend s3.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(ENV, "")
    if not text.strip():
        raise AreaError(
            f"{ENV} is not set: scirepo URLs (sites://, workspace://, ...) work in the "
            "notebook servers of a scirepo hub, which set it"
        )
    try:
        mapping = json.loads(text)
    except ValueError as exc:
        raise AreaError(f"{ENV} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict) or not isinstance(mapping.get("areas"), dict):
        raise AreaError(f'{ENV} must be a JSON object with an object "areas"')
    backend = mapping.get("backend", "local")
    if backend not in BACKENDS:
        raise AreaError(f"{ENV}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    for key, value in mapping["areas"].items():
        if key == "sites":
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                raise AreaError(f"{ENV}: areas.sites must be a list of site names, got {value!r}")
        elif not isinstance(value, str) or not value.strip("/"):
            raise AreaError(f"{ENV}: areas.{key} must be a non-empty path, got {value!r}")
    if backend == "s3" and not isinstance(mapping.get("s3"), dict):
        raise AreaError(f'{ENV}: backend s3 needs an object "s3" (endpoint_url, ...)')
    return {**mapping, "backend": backend}


def current_user(environ=None) -> str:
    """The user whose workspace and scratch space the URLs name."""
    environ = os.environ if environ is None else environ
    user = environ.get(USER_ENV) or getpass.getuser()
    if not NAME.match(user):
        raise AreaError(f"{USER_ENV}={user!r} is not a user name")
    return user


def read_credentials(path: str) -> dict:
    """key, secret (and token) for s3fs from an AWS-style credentials file (INI, section
    `default` or else the first one)."""
    parser = configparser.ConfigParser()
    try:
        with open(path) as f:
            parser.read_file(f)
    except OSError as exc:
        raise AreaError(
            f"the S3 credentials file {path} cannot be read ({exc.strerror}): "
            "ask the operator of this site for your S3 credentials"
        ) from None
    except configparser.Error as exc:
        raise AreaError(f"the S3 credentials file {path} is not an INI file: {exc}") from None
    sections = parser.sections()
    if not sections:
        raise AreaError(f"the S3 credentials file {path} has no section")
    section = parser["default"] if "default" in parser else parser[sections[0]]
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not section.get(k)]
    if missing:
        raise AreaError(f"the S3 credentials file {path} lacks {', '.join(missing)}")
    out = {"key": section["aws_access_key_id"], "secret": section["aws_secret_access_key"]}
    if section.get("aws_session_token"):
        out["token"] = section["aws_session_token"]
    return out


def backend_filesystem(mapping: dict):
    """The file system every area of `mapping` lives on."""
    if mapping["backend"] == "local":
        # Writing makes the missing parent directories, as on S3 (where there are none):
        # the same notebook works on both backends.
        return LocalFileSystem(auto_mkdir=True)
    try:
        import s3fs
    except ImportError:
        raise AreaError(
            "this site keeps its areas in S3, and reading them needs the package s3fs, "
            "which this image does not have: in a terminal, `pip install --user "
            f"s3fs=={fsspec.__version__}` (the release of this image's fsspec), then restart "
            "the kernel; or ask for a stack that has it"
        ) from None
    s3 = mapping["s3"]
    options: dict = {}
    if s3.get("endpoint_url"):
        options["endpoint_url"] = s3["endpoint_url"]
    if s3.get("region"):
        options["client_kwargs"] = {"region_name": s3["region"]}
    if s3.get("credentials_file"):
        options.update(read_credentials(s3["credentials_file"]))
    return s3fs.S3FileSystem(**options)


class AreaFileSystem(DirFileSystem):
    """One data area as an fsspec file system: paths are relative to the area.

    Subclasses set `protocol` (the URL scheme), `area` (its key in SCIREPO_FS), `what` (the
    area in words, for messages) and `kind`:

    - `plain`: the URL path is a path in the area (`software://lib/x.py`);
    - `per_user`: the area holds one directory per user; the URL path is in the current
      user's (`workspace://notes.txt` is `<workspaces>/<user>/notes.txt`);
    - `named`: the first component of the URL path names a site, user or group
      (`public://alice/figure.png`); the root lists the names.

    A path with a `..` component is refused: a URL always names something inside its area,
    whatever the backend (on S3 `..` would be a literal key part).
    """

    protocol = ""
    area = ""
    what = ""
    kind = "plain"
    cachable = False

    def __init__(self, **storage_options):
        mapping = load_mapping()
        root = mapping["areas"].get(self.area)
        if root is None:
            raise AreaError(
                f"this site has no {self.what}: {self.protocol}:// needs areas.{self.area} in {ENV}"
            )
        root = root.rstrip("/")
        if self.kind == "per_user":
            root = f"{root}/{current_user()}"
        self.mapping = mapping
        super().__init__(path=root, fs=backend_filesystem(mapping), **storage_options)

    @classmethod
    def _strip_protocol(cls, path):
        """The path without the scheme; the area's root is "/", never "": DirFileSystem is
        a chaining file system, and fsspec's url_to_fs gives an empty path of such a file
        system the path of the one below it in the chain (here: none)."""
        stripped = super()._strip_protocol(path)
        if isinstance(stripped, list):
            return [p or "/" for p in stripped]
        return stripped or "/"

    def _relative(self, path: str) -> str:
        """`path` (with or without the scheme) as a checked path inside the area."""
        text = self._strip_protocol(path)
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise AreaError(
                f"{self.protocol}://{text}: '..' is not allowed: a {self.protocol}:// URL "
                f"names a path inside the {self.what}"
            )
        if self.kind == "named" and parts:
            self._check_name(parts[0], text)
        return "/".join(parts)

    def _check_name(self, name: str, text: str) -> None:
        if not NAME.match(name) and not GLOB.search(name):
            raise AreaError(f"{self.protocol}://{text}: {name!r} is not a valid name")

    def _join(self, path):
        if isinstance(path, str):
            rel = self._relative(path)
            return f"{self.path}{self.fs.sep}{rel}" if rel else self.path
        if isinstance(path, dict):
            return {self._join(p): value for p, value in path.items()}
        return [self._join(p) for p in path]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.protocol}:// -> {self.path!r})"


class SitesFileSystem(AreaFileSystem):
    """`sites://SITE/PATH`: site data (read-only for users). `sites://` lists the sites."""

    protocol = "sites"
    area = "data"
    what = "site data area"
    kind = "named"

    def _sites(self) -> list[str]:
        return self.mapping["areas"].get("sites", [])

    def _check_name(self, name: str, text: str) -> None:
        sites = self._sites()
        if name not in sites and not GLOB.search(name):
            known = ", ".join(sites) or "none"
            raise FileNotFoundError(
                f"sites://{text}: this site has no site data named {name!r} (sites: {known})"
            )

    def _configured(self, name: str) -> bool:
        return name.split("/", 1)[0] in self._sites()

    def ls(self, path, detail=True, **kwargs):
        """As DirFileSystem's; the root lists only the configured sites."""
        entries = super().ls(path, detail=detail, **kwargs)
        return [e for e in entries if self._configured(e["name"] if detail else e)]

    def find(self, path, *args, **kwargs):
        """As DirFileSystem's, inside the configured sites only."""
        found = super().find(path, *args, **kwargs)
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if self._configured(k)}
        return [p for p in found if self._configured(p)]

    def glob(self, path, **kwargs):
        """As DirFileSystem's, inside the configured sites only (`sites://*/x`)."""
        found = super().glob(path, **kwargs)
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if self._configured(k)}
        return [p for p in found if self._configured(p)]


class SoftwareFileSystem(AreaFileSystem):
    """`software://PATH`: the shared software area (read-only for users)."""

    protocol = "software"
    area = "software"
    what = "shared software area"


class WorkspaceFileSystem(AreaFileSystem):
    """`workspace://PATH`: your private workspace (`~/workspace`)."""

    protocol = "workspace"
    area = "workspaces"
    what = "workspace area"
    kind = "per_user"


class ScratchFileSystem(AreaFileSystem):
    """`scratch://PATH`: your scratch space."""

    protocol = "scratch"
    area = "scratch"
    what = "scratch area"
    kind = "per_user"


class UploadFileSystem(AreaFileSystem):
    """`upload://SITE/PATH`: the upload sandbox, moved into site data by the transfer."""

    protocol = "upload"
    area = "upload"
    what = "upload sandbox"


class PublicFileSystem(AreaFileSystem):
    """`public://USER/PATH`: a user's public folder."""

    protocol = "public"
    area = "public"
    what = "public area"
    kind = "named"


class GroupFileSystem(AreaFileSystem):
    """`group://NAME/PATH`: the shared area of group NAME."""

    protocol = "group"
    area = "groups"
    what = "group area"
    kind = "named"


SCHEMES = {
    cls.protocol: cls
    for cls in (
        SitesFileSystem,
        SoftwareFileSystem,
        WorkspaceFileSystem,
        ScratchFileSystem,
        UploadFileSystem,
        PublicFileSystem,
        GroupFileSystem,
    )
}
