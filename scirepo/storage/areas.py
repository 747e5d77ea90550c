"""Who may do what in each storage area, and the repair of per-user and per-group folders.

`PERMISSIONS` is the permissions matrix of the areas: for each area and each kind of
account, whether it may list the directory, read a file the area's owner made there
(with the default umask 022), and create a file there. It is the single source of the
table in storage/README.md (`matrix_markdown`; a unit test keeps them equal) and of
tests/unit/test_storage_areas.py, which checks every cell against the real file system
as real users. The owners and modes that produce it are `scirepo.config.layout` (the area
directories), `scirepo.users` (per-user folders) and `scirepo.storage.groups`.

`scirepo storage repair` (run by every deploy) makes or repairs the public and scratch
folders and workspace links of every platform user and the directory of every group.
"""

from __future__ import annotations

import json
import os

from scirepo import config as sconfig
from scirepo import users
from scirepo.config import ScirepoError
from scirepo.storage import groups

# Kinds of account, in the matrix's column order, with what each is.
KINDS = {
    "owner": "the user the area belongs to (group area: a member who made the file; "
    "upload: the uploader)",
    "other": "another platform user",
    "member": "a platform user in a group with the owner",
    "admin": "a hub administrator (users.admins): no extra file access",
    "manager": "a platform user in storage.data_managers_group",
    "outsider": "a Unix account outside users.group (not a platform user)",
}
# Areas: path below storage.root, then per kind of account what it may do:
# l = list the directory, r = read the owner's file, w = create a file; None: no owner.
PERMISSIONS = {
    "workspace": ("workspaces/<owner>", {
        "owner": "lrw", "other": "---", "member": "---", "admin": "---",
        "manager": "---", "outsider": "---"}),
    "public": ("public/<owner>", {
        "owner": "lrw", "other": "lr-", "member": "lr-", "admin": "lr-",
        "manager": "lr-", "outsider": "---"}),
    "scratch": ("scratch/<owner>", {
        "owner": "lrw", "other": "---", "member": "---", "admin": "---",
        "manager": "---", "outsider": "---"}),
    "group": ("groups/<group>", {
        "owner": "lrw", "other": "---", "member": "lrw", "admin": "---",
        "manager": "---", "outsider": "---"}),
    "upload": ("upload", {
        "owner": "lrw", "other": "lrw", "member": "lrw", "admin": "lrw",
        "manager": "lrw", "outsider": "---"}),
    "site data": ("data/<site>", {
        "owner": None, "other": "lr-", "member": "lr-", "admin": "lr-",
        "manager": "lrw", "outsider": "lr-"}),
    "software": ("software", {
        "owner": None, "other": "lr-", "member": "lr-", "admin": "lr-",
        "manager": "lrw", "outsider": "lr-"}),
}  # fmt: skip
OPS = {"l": "list", "r": "read", "w": "write"}
# Areas mounted read-only in every user container, whatever the account may do on the
# host (container_mounts): in JupyterLab nobody writes there, data managers neither.
CONTAINER_READ_ONLY = ("site data", "software")


def cells(in_container: bool = False):
    """(area, kind, op, allowed) for every cell of the matrix that applies; with
    `in_container`, as seen from the account's own server."""
    for area, (_path, row) in PERMISSIONS.items():
        for kind in KINDS:
            if row[kind] is None:
                continue
            for letter, op in OPS.items():
                allowed = letter in row[kind]
                if in_container and op == "write" and area in CONTAINER_READ_ONLY:
                    allowed = False
                yield area, kind, op, allowed


def matrix_markdown() -> str:
    """The matrix as the Markdown table of storage/README.md."""

    def cell(value: str | None) -> str:
        if value is None:
            return "n/a"
        words = [OPS[c] for c in value if c != "-"]
        return ", ".join(words) if words else "nothing"

    lines = [
        "| area | path | " + " | ".join(KINDS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in KINDS) + " |",
    ]
    for area, (path, row) in PERMISSIONS.items():
        lines.append(f"| {area} | `{path}` | " + " | ".join(cell(row[k]) for k in KINDS) + " |")
    return "\n".join(lines) + "\n"


def container_mounts(paths: dict, username: str, home: str) -> list[dict]:
    """Docker bind mounts of a user's server (`paths` of the resolved config), at the same
    absolute paths as on the host: ~/workspace and the `public` and `scratch` links in it
    resolve in both.

    Every public folder is visible read-only and the user's own one read-write above it
    (Docker mounts the deeper target last). The group areas are mounted whole: the
    directories' modes and ACLs let only members in, and scirepo-start gives the server
    the user's groups as they were at its start. `type=bind` mounts fail when the source
    is missing instead of creating a root-owned directory."""
    spec = [
        (home, False),
        (f"{paths['workspaces']}/{username}", False),
        (paths["data"], True),
        (paths["software"], True),
        (paths["upload"], False),
        (paths["public"], True),
        (f"{paths['public']}/{username}", False),
        (paths["groups"], False),
        (f"{paths['scratch']}/{username}", False),
    ]
    return [{"type": "bind", "source": src, "target": src, "read_only": ro} for src, ro in spec]


def repair(cfg: dict) -> dict:
    """Make or repair every platform user's public and scratch folders (and their links
    in the workspace) and every group's directory; return what changed."""
    changed_users = [
        a.pw_name for a in users.platform_users(cfg) if users.ensure_user_areas(cfg, a.pw_name)
    ]
    changed_groups = [
        g["name"] for g in groups.list_groups(cfg) if groups.ensure_group_dir(cfg, g["name"])
    ]
    return {
        "users": changed_users,
        "groups": changed_groups,
        "changed": len(changed_users) + len(changed_groups),
    }


def register(actions) -> None:
    parser = actions.add_parser(
        "repair",
        help="make or repair the users' public and scratch folders and the group directories",
        description="Make or repair every platform user's public and scratch folders and "
        "their links in the workspace, and every group directory (owner, mode, ACLs). "
        "Every deploy runs it.",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd_repair)


def _cmd_repair(args) -> int:
    if os.geteuid() != 0:
        raise ScirepoError("repairing the storage areas needs root")
    result = repair(sconfig.resolve(sconfig.load(sconfig.locate(args.config))))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"repaired: users {' '.join(result['users']) or '-'}; "
              f"groups {' '.join(result['groups']) or '-'}")  # fmt: skip
    return 0
