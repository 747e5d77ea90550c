"""Groups of platform users sharing a directory: the `scirepo group` verb.

A group `NAME` is a Unix group whose gid lies in storage.groups.gid_min..gid_max (that
range is how a platform group is told from any other group) and a directory
paths.groups/NAME, root:NAME 2770, with the access and default ACL entries
`group:NAME:rwx` and `mask::rwx`: every member may create, change and delete files there,
new files and directories get the group NAME (setgid) and, through the default ACL, stay
group-writable whatever the creating member's umask (the ACL replaces the umask), and
subdirectories inherit all of it. Other users cannot even list it.

Every function looks first and changes only what is missing, so it is safe to call
twice; bad input (an invalid or taken name, an unknown user, a group that is not a
platform group) is refused with the reason before anything changes. Membership is
changed with one `gpasswd -M` (one rewrite of /etc/group and /etc/gshadow). A running
server or SSH session keeps the groups it started with: a new member gets the group at
the next server start or login. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import logging
import os
import shutil
import subprocess

from scirepo import config as sconfig
from scirepo.config import ScirepoError
from scirepo.users import USERNAME_RE, _getgrnam, _getpwnam, name_problem

log = logging.getLogger(__name__)


class GroupError(ScirepoError):
    """A group cannot be created, changed or removed as asked."""


# --------------------------------------------------------------------------- lookups


def _in_gid_range(cfg: dict, gid: int) -> bool:
    g = cfg["storage"]["groups"]
    return g["gid_min"] <= gid <= g["gid_max"]


def is_platform_group(cfg: dict, name: str) -> bool:
    group = _getgrnam(name)
    return group is not None and _in_gid_range(cfg, group.gr_gid)


def group_dir(cfg: dict, name: str) -> str:
    return os.path.join(cfg["paths"]["groups"], name)


def validate_group_name(cfg: dict, name: str) -> None:
    """Raise GroupError unless `name` may be (or already is) a platform group.

    Refused: names that are not POSIX-portable, reserved names, the platform's own groups,
    names of accounts (every user has a group of its own name), and existing groups whose
    gid is outside storage.groups (system groups and others the platform did not make).
    """
    problem = name_problem(cfg, "group name", name)
    if problem:
        raise GroupError(problem)
    if name in (cfg["users"]["group"], cfg["storage"]["data_managers_group"]):
        raise GroupError(f"group name {name!r} is a platform group of the site config")
    account = _getpwnam(name)
    if account is not None:
        raise GroupError(f"group name {name!r} is the name of a user (uid {account.pw_uid})")
    group = _getgrnam(name)
    if group is not None and not _in_gid_range(cfg, group.gr_gid):
        g = cfg["storage"]["groups"]
        raise GroupError(
            f"group {name!r} exists with gid {group.gr_gid}, outside storage.groups "
            f"({g['gid_min']}-{g['gid_max']}): not a platform group"
        )


def _platform_users(cfg: dict, usernames: list[str]) -> list[str]:
    """`usernames` without duplicates; GroupError naming every one that is not a platform
    user (a platform account's uid lies in users.uid_min..users.uid_max)."""
    lo, hi = cfg["users"]["uid_min"], cfg["users"]["uid_max"]
    bad = []
    for user in usernames:
        account = _getpwnam(user) if USERNAME_RE.fullmatch(user) else None
        if account is None:
            bad.append(f"{user!r} (no such user)")
        elif not lo <= account.pw_uid <= hi:
            bad.append(f"{user!r} (uid {account.pw_uid}, not a platform user)")
    if bad:
        raise GroupError(f"not platform users: {', '.join(bad)}; nothing changed")
    return list(dict.fromkeys(usernames))


def _existing(cfg: dict, name: str):
    validate_group_name(cfg, name)
    group = _getgrnam(name)
    if group is None:
        raise GroupError(f"no group {name!r}; create it with `scirepo group create {name}`")
    return group


# --------------------------------------------------------------------------- changes


def _run(argv: list[str], pass_fds: tuple[int, ...] = ()) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, pass_fds=pass_fds)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise GroupError(f"{argv[0]} failed: {detail}")
    return result.stdout


def _free_gid(cfg: dict, name: str) -> int:
    """The gid for a new group `name`: that of its kept directory when a group of this
    name was deleted with its data (the files come back with it), else the lowest gid of
    the range that no group uses and no kept group directory owns."""
    used = {g.gr_gid for g in grp.getgrall()}
    kept = {}
    with contextlib.suppress(OSError), os.scandir(cfg["paths"]["groups"]) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                kept[entry.name] = entry.stat(follow_symlinks=False).st_gid
    own = kept.get(name)
    if own is not None and own not in used and _in_gid_range(cfg, own):
        return own
    taken = used | set(kept.values())
    g = cfg["storage"]["groups"]
    for gid in range(g["gid_min"], g["gid_max"] + 1):
        if gid not in taken:
            return gid
    raise GroupError(
        f"no free gid left in storage.groups ({g['gid_min']}-{g['gid_max']}); widen the range"
    )


ACL = "group:{name}:rwx,mask::rwx"
DEFAULT_ACL = "user::rwx,group::rwx,group:{name}:rwx,mask::rwx,other::---"


def _acl_text(fd: int, default: bool = False) -> str:
    argv = ["getfacl", "--omit-header", "--absolute-names", "--numeric"]
    return _run([*argv, *(["--default"] if default else []), f"/proc/self/fd/{fd}"], (fd,))


def ensure_group_dir(cfg: dict, name: str) -> bool:
    """paths.groups/NAME as the module docstring describes it; True if anything changed.
    The group must exist. A link or file in its place is an error, never followed."""
    gid = grp.getgrnam(name).gr_gid
    parent = cfg["paths"]["groups"]
    if not os.path.isdir(parent):
        raise GroupError(f"{parent} does not exist; deploy first (the storage role makes it)")
    path = group_dir(cfg, name)
    changed = False
    fd_parent = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=fd_parent)
            changed = True
            log.info("created %s", path)
        except FileExistsError:
            pass
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd_parent
            )
        except OSError:
            raise GroupError(f"{path} exists and is not a directory; move it away") from None
    finally:
        os.close(fd_parent)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (0, gid):
            os.fchown(fd, 0, gid)
            changed = True
        if st.st_mode & 0o7777 != 0o2770:
            os.fchmod(fd, 0o2770)
            changed = True
        # The ACL tools get the open directory (/proc/self/fd/N in their process), not a
        # name that could point elsewhere by now.
        proc = f"/proc/self/fd/{fd}"
        before = _acl_text(fd) + _acl_text(fd, default=True)
        _run(["setfacl", "-m", ACL.format(name=name), proc], (fd,))
        _run(["setfacl", "-d", "-m", DEFAULT_ACL.format(name=name), proc], (fd,))
        if _acl_text(fd) + _acl_text(fd, default=True) != before:
            changed = True
    finally:
        os.close(fd)
    if changed:
        log.info("set owner, mode and ACLs of %s", path)
    return changed


def create_group(cfg: dict, name: str) -> bool:
    """Make platform group `name` and its directory; True if the group was created.
    For an existing platform group the directory is repaired."""
    validate_group_name(cfg, name)
    path = group_dir(cfg, name)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise GroupError(f"{path} exists and is not a directory; move it away")
    if not os.path.isdir(cfg["paths"]["groups"]):
        raise GroupError(
            f"{cfg['paths']['groups']} does not exist; deploy first (the storage role makes it)"
        )
    created = False
    if _getgrnam(name) is None:
        gid = _free_gid(cfg, name)
        _run(["groupadd", "--gid", str(gid), name])
        created = True
        log.info("created group %s (gid %d)", name, gid)
    try:
        ensure_group_dir(cfg, name)
    except BaseException:
        if created:  # nothing half-made: the group goes again
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        raise
    return created


def set_members(cfg: dict, name: str, add=(), remove=()) -> tuple[list[str], list[str]]:
    """Add `add` to and remove `remove` from group `name` in one step; return who was
    added and who was removed (those already in or out are not listed)."""
    group = _existing(cfg, name)
    add = _platform_users(cfg, list(add))
    remove = list(dict.fromkeys(remove))
    if remove:
        unknown = [u for u in remove if not USERNAME_RE.fullmatch(u) or _getpwnam(u) is None]
        if unknown:
            raise GroupError(f"no such users: {', '.join(map(repr, unknown))}; nothing changed")
    members = list(group.gr_mem)
    added = [u for u in add if u not in members]
    removed = [u for u in remove if u in members]
    new = [u for u in members if u not in removed] + added
    if added or removed:
        _run(["gpasswd", "-M", ",".join(new), name])
        log.info("group %s: added %s, removed %s", name, added or "nobody", removed or "nobody")
    return added, removed


def list_groups(cfg: dict) -> list[dict]:
    """Every platform group: name, gid, members, directory, and whether it exists."""
    out = []
    for group in sorted(grp.getgrall(), key=lambda g: g.gr_name):
        if _in_gid_range(cfg, group.gr_gid):
            path = group_dir(cfg, group.gr_name)
            out.append(
                {
                    "name": group.gr_name,
                    "gid": group.gr_gid,
                    "members": sorted(group.gr_mem),
                    "path": path,
                    "dir_exists": os.path.isdir(path) and not os.path.islink(path),
                }
            )
    return out


def delete_group(cfg: dict, name: str, delete_data: bool = False) -> bool:
    """Remove platform group `name`; True if there was one. Its directory is kept (still
    owned by the gid, which no new group gets: creating `name` again gives it back)
    unless `delete_data`."""
    validate_group_name(cfg, name)
    group = _getgrnam(name)
    path = group_dir(cfg, name)
    if group is not None:
        _run(["groupdel", name])
        log.info("deleted group %s", name)
    if delete_data and os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)  # fd-based: links inside are removed, never followed
        log.info("deleted %s", path)
    return group is not None


def ensure_all(cfg: dict) -> int:
    """Repair the directory of every platform group (the deploy runs this); return how
    many changed."""
    return sum(ensure_group_dir(cfg, g["name"]) for g in list_groups(cfg))


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add the `group` verb to the `scirepo` command line."""
    parser = subparsers.add_parser(
        "group",
        help="groups of users sharing a directory (needs root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a group and its shared directory")
    create.add_argument("name")
    create.set_defaults(func=_cmd_create)
    add = actions.add_parser("add", help="add users to a group (effective at their next login)")
    add.add_argument("name")
    add.add_argument("users", nargs="+", metavar="USER")
    add.set_defaults(func=_cmd_add)
    rm = actions.add_parser("remove", help="remove users from a group")
    rm.add_argument("name")
    rm.add_argument("users", nargs="+", metavar="USER")
    rm.set_defaults(func=_cmd_remove)
    ls = actions.add_parser("list", help="list the groups, their members and directories")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)
    delete = actions.add_parser("delete", help="delete a group (its directory is kept)")
    delete.add_argument("name")
    delete.add_argument("--delete-data", action="store_true", help="also delete its directory")
    delete.set_defaults(func=_cmd_delete)
    for sub in (create, add, rm, ls, delete):
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)


def _site(args) -> dict:
    if os.geteuid() != 0:
        raise GroupError("managing groups needs root")
    return sconfig.resolve(sconfig.load(sconfig.locate(args.config)))


def _cmd_create(args) -> int:
    cfg = _site(args)
    created = create_group(cfg, args.name)
    gid = grp.getgrnam(args.name).gr_gid
    state = "created" if created else "already exists"
    print(f"group {args.name} (gid {gid}): {state}; directory {group_dir(cfg, args.name)}")
    return 0


def _cmd_add(args) -> int:
    added, _ = set_members(_site(args), args.name, add=args.users)
    already = [u for u in args.users if u not in added]
    if added:
        print(f"added to {args.name}: {' '.join(added)}")
        print("(effective at their next server start or SSH login)")
    if already:
        print(f"already in {args.name}: {' '.join(dict.fromkeys(already))}")
    return 0


def _cmd_remove(args) -> int:
    _, removed = set_members(_site(args), args.name, remove=args.users)
    if removed:
        print(f"removed from {args.name}: {' '.join(removed)}")
        print("(running servers and SSH sessions keep the group until they end)")
    others = [u for u in args.users if u not in removed]
    if others:
        print(f"not in {args.name}: {' '.join(dict.fromkeys(others))}")
    return 0


def _cmd_list(args) -> int:
    groups = list_groups(_site(args))
    if args.json:
        print(json.dumps(groups, indent=2))
        return 0
    for g in groups:
        missing = "" if g["dir_exists"] else " (directory missing)"
        print(f"{g['name']}\t{g['gid']}\t{','.join(g['members']) or '-'}\t{g['path']}{missing}")
    return 0


def _cmd_delete(args) -> int:
    cfg = _site(args)
    if delete_group(cfg, args.name, args.delete_data):
        kept = "deleted" if args.delete_data else "kept"
        print(f"deleted group {args.name}; directory {group_dir(cfg, args.name)} {kept}")
    else:
        print(f"{args.name}: no such group")
    return 0
