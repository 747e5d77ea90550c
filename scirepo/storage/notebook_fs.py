"""What a user server needs for the data-area URLs of scirepo-fs (sites://, workspace://, ...).

The hub's spawner calls `environment` and `mounts` at each start: `SCIREPO_FS` (JSON) tells
the package in the image (images/base/scirepo-fs) where each area is, on the local file
system (the areas are mounted at their host paths) or in an S3-compatible bucket
(`storage.fsspec.backend: s3`), where the key layout below `prefix` is the layout below
`storage.root` (`data/<site>`, `workspaces/<user>`, ...). The value is the same for every
user: the package takes the user from NB_USER.

S3 credentials never go into the environment: with backend s3, the user's own credentials
file `<credentials_dir>/<user>` on the host is mounted read-only at `CREDENTIALS_TARGET`.

Areas that a site's `paths` lack (an older config without `public`, `groups` or `scratch`)
are left out; their schemes then tell the user that this site has no such area.
"""

from __future__ import annotations

import json
import posixpath

ENV = "SCIREPO_FS"
CREDENTIALS_TARGET = "/run/secrets/scirepo-s3"
# Keys of the resolved `paths` that are areas with a scheme (scirepo_fs.areas), besides
# `data` and `sites`.
AREAS = ("software", "workspaces", "upload", "public", "groups", "scratch")


class NotebookFSError(ValueError):
    """A config the URL mapping cannot be made from."""


def mapping(paths: dict, fsspec_cfg: dict) -> dict:
    """The SCIREPO_FS document for the resolved `paths` and `storage.fsspec`."""
    backend = fsspec_cfg.get("backend", "local")
    local = {"data": paths["data"], **{a: paths[a] for a in AREAS if a in paths}}
    if backend == "local":
        areas = dict(local)
        extra = {}
    elif backend == "s3":
        s3 = fsspec_cfg.get("s3", {})
        if not s3.get("bucket") or not s3.get("endpoint_url"):
            raise NotebookFSError(
                "storage.fsspec.backend is s3: storage.fsspec.s3.endpoint_url and "
                "storage.fsspec.s3.bucket must be set"
            )
        base = posixpath.join(s3["bucket"], s3.get("prefix", "").strip("/")).rstrip("/")
        areas = {key: _s3_root(base, paths["root"], path, key) for key, path in local.items()}
        extra = {
            "s3": {
                "endpoint_url": s3["endpoint_url"],
                "region": s3.get("region", ""),
                "credentials_file": CREDENTIALS_TARGET,
            }
        }
    else:
        raise NotebookFSError(f"storage.fsspec.backend: {backend!r} is not local or s3")
    areas["sites"] = sorted(paths["sites"])
    return {"backend": backend, "areas": areas, **extra}


def _s3_root(base: str, root: str, path: str, key: str) -> str:
    rel = posixpath.relpath(path, root)
    if rel == "." or rel.startswith("../"):
        raise NotebookFSError(f"paths.{key} ({path}) is not below storage.root ({root})")
    return f"{base}/{rel}"


def environment(paths: dict, fsspec_cfg: dict) -> dict[str, str]:
    """Environment variables of a user server for scirepo-fs."""
    return {ENV: json.dumps(mapping(paths, fsspec_cfg), sort_keys=True)}


def mounts(fsspec_cfg: dict, user: str) -> list[dict]:
    """Extra bind mounts of a user server for scirepo-fs: the user's S3 credentials file
    (read-only), with backend s3; none with the local backend."""
    if fsspec_cfg.get("backend", "local") != "s3":
        return []
    directory = fsspec_cfg.get("s3", {}).get("credentials_dir", "")
    if not directory:
        raise NotebookFSError("storage.fsspec.s3.credentials_dir must be set with backend s3")
    source = posixpath.join(directory, user)
    return [{"type": "bind", "source": source, "target": CREDENTIALS_TARGET, "read_only": True}]
