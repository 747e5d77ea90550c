"""Platform users: Unix accounts on the host, created before they ever log in.

`ensure_*` functions look at pwd/grp and the file system first and change only what is
missing or wrong, so they are safe to call again; `remove_user` undoes `ensure_user`.
They run the shadow tools (groupadd, useradd, usermod, chpasswd, chage, userdel) rather
than editing /etc/passwd, and need root.

A platform user `alice` gets: a uid from users.uid_min..users.uid_max, her own group
`alice` whose gid equals that uid, membership of users.group (which lets her log in),
a home under users.home_root (0700), a workspace paths.workspaces/alice (0700) and the
symlink ~/workspace pointing to it, a public folder paths.public/alice (0755: every
platform user reads it, through the parent that only users.group may enter) and a scratch
folder paths.scratch/alice (0700), linked in the workspace as `public` and `scratch`.
The config passed in must be resolved (`scirepo.config.resolve`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from scirepo import config as sconfig
from scirepo.config import ScirepoError

# Held while an account is made (uid allocation to useradd); /run/lock is a tmpfs.
ACCOUNTS_LOCK = "/run/lock/scirepo-users.lock"
log = logging.getLogger(__name__)

# Areas (keys of paths) that hold one directory per user, named after the user.
USER_AREAS = ("workspaces", "public", "scratch")
USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")  # as site.contact_email in the schema
# No 0/O/o, 1/l/I: the temporary password is read off a screen and typed in.
PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105
PASSWORD_GROUPS, PASSWORD_GROUP_LEN = 4, 5  # 20 random characters, about 115 bits


class UserError(ScirepoError):
    """A user cannot be created, changed or removed as asked."""


# --------------------------------------------------------------------------- pure helpers


def allocate_uid(used_uids, used_gids, lo: int, hi: int) -> int:
    """The lowest id in lo..hi (inclusive) that is free as a uid AND as a gid."""
    used = set(used_uids) | set(used_gids)
    for candidate in range(lo, hi + 1):
        if candidate not in used:
            return candidate
    raise UserError(
        f"no free uid/gid left in users.uid_min..users.uid_max ({lo}-{hi}); widen the range"
    )


def generate_password() -> str:
    groups = (
        "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_GROUP_LEN))
        for _ in range(PASSWORD_GROUPS)
    )
    return "-".join(groups)


def clean_gecos_field(value: str, what: str) -> str:
    """`value` made safe for one GECOS field.

    Commas, colons and line breaks are field separators of /etc/passwd and become spaces;
    any other control character is refused, since it can only be a mistake or an attack.
    """
    value = re.sub(r"[,:\r\n]", " ", value)
    bad = [c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]
    if bad:
        raise UserError(f"{what} contains a control character ({bad[0]!r}); remove it")
    return " ".join(value.split())


def _in_range(cfg: dict, ident: int) -> bool:
    return cfg["users"]["uid_min"] <= ident <= cfg["users"]["uid_max"]


def _getpwnam(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _getgrnam(name: str):
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def name_problem(cfg: dict, kind: str, name) -> str | None:
    """Why `name` cannot name a platform account or group (`kind`: "username", "group
    name"), or None: it is not POSIX-portable, or it is reserved (built-in and
    users.reserved_names)."""
    if not isinstance(name, str) or not USERNAME_RE.fullmatch(name):
        return (
            f"invalid {kind} {name!r}: use a lowercase letter or _, then up to 31 "
            "lowercase letters, digits, _ or -"
        )
    reason = sconfig.reserved_reason(name, cfg["users"]["reserved_names"])
    return f"{kind} {name!r} is {reason}" if reason else None


def validate_username(cfg: dict, username: str) -> None:
    """Raise UserError unless `username` may be (or already is) a platform user.

    Refused: names that are not POSIX-portable, reserved names (built-in and
    users.reserved_names), and names of existing accounts or groups that are not platform
    ones (a platform account's id lies in users.uid_min..users.uid_max).
    """
    problem = name_problem(cfg, "username", username)
    if problem:
        raise UserError(problem)
    for name in (cfg["users"]["group"], cfg["storage"]["data_managers_group"]):
        if username == name:
            raise UserError(f"username {username!r} is the name of a platform group")
    account = _getpwnam(username)
    if account and not _in_range(cfg, account.pw_uid):
        raise UserError(
            f"username {username!r} is an existing system account (uid {account.pw_uid}), "
            "not a platform user"
        )
    group = _getgrnam(username)
    if group and not _in_range(cfg, group.gr_gid):
        raise UserError(f"username {username!r} is an existing system group (gid {group.gr_gid})")


# --------------------------------------------------------------------------- commands


def _run(argv: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise UserError(f"{argv[0]} failed: {detail}")


def ensure_group(name: str, gid: int | None = None, system: bool = False) -> bool:
    """Create group `name` (with `gid`, if given) unless it exists; True if created.

    An existing group with another gid than asked for is an error, not silently accepted.
    """
    group = _getgrnam(name)
    if group:
        if gid is not None and group.gr_gid != gid:
            raise UserError(f"group {name!r} exists with gid {group.gr_gid}, expected {gid}")
        return False
    argv = ["groupadd"]
    if gid is not None:
        argv += ["--gid", str(gid)]
    if system:
        argv.append("--system")
    _run([*argv, name])
    log.info("created group %s", name)
    return True


def _ensure_member(username: str, group: str) -> None:
    if username not in _getgrnam(group).gr_mem:
        _run(["usermod", "--append", "--groups", group, username])
        log.info("added %s to group %s", username, group)


def _owner_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _adopt(path: str, old_uid: int, old_gid: int, uid: int, gid: int) -> None:
    """Give files of a removed account (kept data) under `path` to the account re-added
    with the same name. Symlinks are changed, not followed."""
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(parent, name)
            st = os.lstat(full)
            if st.st_uid == old_uid:
                new_gid = gid if st.st_gid == old_gid else st.st_gid
                os.chown(full, uid, new_gid, follow_symlinks=False)


def _ensure_dir(path: str, uid: int, gid: int, mode: int, username: str) -> bool:
    """`path` is a real directory owned by uid:gid with `mode`; True if anything changed."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        raise UserError(f"{path} exists and is not a directory; move it away")
    changed = False
    if not os.path.exists(path):
        os.mkdir(path, mode)
        changed = True
        log.info("created %s", path)
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        owner = _owner_name(st.st_uid)
        if st.st_uid != 0 and owner is not None and owner != username:
            raise UserError(f"{path} belongs to another account ({owner}); not taking it")
        if st.st_uid != 0 and owner is None:
            # Data kept when an account of the same name was removed: hand it over.
            _adopt(path, st.st_uid, st.st_gid, uid, gid)
        os.chown(path, uid, gid, follow_symlinks=False)
        changed = True
        log.info("set owner of %s to %s", path, username)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed = True
        log.info("set mode of %s to %04o", path, mode)
    return changed


def _ensure_root_dir(path: str, mode: int) -> None:
    """Create a root-owned directory (with parents 0755) if missing; leave an existing one
    as it is: Ansible owns its mode."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _ensure_root_dir(parent, 0o755)
    os.mkdir(path)
    os.chmod(path, mode)  # mkdir's mode is masked by the umask
    log.info("created %s", path)


def _ensure_area(cfg: dict, key: str) -> str:
    """paths[key], created as `config.layout` describes it when missing (before the first
    deploy, or in tests); an existing one is left as it is: Ansible owns its mode."""
    path = cfg["paths"][key]
    if not os.path.isdir(path):
        (spec,) = [a for a in cfg["layout"] if a["path"] == path]
        _ensure_root_dir(os.path.dirname(path), 0o755)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            os.chown(path, pwd.getpwnam(spec["owner"]).pw_uid, grp.getgrnam(spec["group"]).gr_gid)
            os.chmod(path, int(spec["mode"], 8))
            log.info("created %s", path)
    return path


def _ensure_link_in(directory: str, name: str, target: str, uid: int, gid: int) -> bool:
    """Link `directory/name` -> `target` unless something of that name is there; True if
    made. `directory` belongs to the user: a file or link of theirs with that name is
    theirs and is left alone (with a warning), and nothing in it is followed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.symlink(target, name, dir_fd=fd)
        except FileExistsError:
            try:
                current = os.readlink(name, dir_fd=fd)
            except OSError:
                current = None
            if current != target:
                log.warning("%s/%s exists and is not a link to %s; left alone", directory, name,
                            target)  # fmt: skip
            return False
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        log.info("linked %s/%s -> %s", directory, name, target)
        return True
    finally:
        os.close(fd)


def ensure_user_areas(cfg: dict, username: str) -> bool:
    """The public and scratch folders of existing platform user `username` and their links
    in the workspace, made or repaired (owner, mode); True if anything changed.
    `ensure_user` calls it; the deploy calls it for every user (`scirepo storage repair`).
    Without a workspace (archived by offboarding) the links wait for its return."""
    account = pwd.getpwnam(username)
    uid, gid = account.pw_uid, account.pw_gid
    workspace = os.path.join(cfg["paths"]["workspaces"], username)
    changed = False
    for key, mode in (("public", 0o755), ("scratch", 0o700)):
        folder = os.path.join(_ensure_area(cfg, key), username)
        changed |= _ensure_dir(folder, uid, gid, mode, username)
        if os.path.isdir(workspace) and not os.path.islink(workspace):
            changed |= _ensure_link_in(workspace, key, folder, uid, gid)
    return changed


def platform_users(cfg: dict) -> list[pwd.struct_passwd]:
    """Every account whose uid lies in users.uid_min..users.uid_max, by name."""
    return sorted((p for p in pwd.getpwall() if _in_range(cfg, p.pw_uid)), key=lambda p: p.pw_name)


def _ensure_symlink(link: str, target: str, uid: int, gid: int) -> None:
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.unlink(link)
        log.info("replaced wrong symlink %s", link)
    elif os.path.lexists(link):
        raise UserError(f"{link} exists and is not a symlink; move it away, then run again")
    os.symlink(target, link)
    os.chown(link, uid, gid, follow_symlinks=False)
    log.info("linked %s -> %s", link, target)


def _used_ids(cfg: dict) -> tuple[set[int], set[int]]:
    uids = {p.pw_uid for p in pwd.getpwall()}
    gids = {g.gr_gid for g in grp.getgrall()}
    # uids still owning kept data of removed users are not handed out again: a new user
    # would otherwise get a stranger's files.
    for base in (cfg["users"]["home_root"], *(cfg["paths"][k] for k in USER_AREAS)):
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                uids.add(entry.stat(follow_symlinks=False).st_uid)
    return uids, gids


def ensure_user(
    cfg: dict,
    username: str,
    full_name: str,
    email: str,
    admin: bool = False,
    expire_password: bool = False,
    note: str = "",
) -> tuple[bool, str | None]:
    """Make `username` a complete platform user; return (created, temporary_password).

    A new account gets a temporary password (returned, never stored), set with chpasswd;
    `expire_password` makes the user change it at first login (`chage -d 0`). For an
    existing account the password, shell and GECOS are left alone; group membership,
    home, workspace and symlink are fixed, and (False, None) is returned.

    Hub administrators are listed in users.admins of the config, the one place the hub
    reads them from: `admin=True` only checks that `username` is listed there. `note` goes
    into the second GECOS field of a new account (the accounts service names its request
    there, so that a rerun recognises the account it made).
    """
    if "paths" not in cfg:
        raise ValueError("ensure_user needs a resolved config (scirepo.config.resolve)")
    if os.geteuid() != 0:
        raise UserError("managing users needs root")
    validate_username(cfg, username)
    users = cfg["users"]
    if admin and username not in users["admins"]:
        raise UserError(
            f"{username!r} is not in users.admins of the site config; hub administrators "
            "are listed there: add it and deploy, then run this again"
        )
    full_name = clean_gecos_field(full_name, "full name")
    email = clean_gecos_field(email, "email")
    if not full_name:
        raise UserError("the full name is empty")
    if not EMAIL_RE.fullmatch(email):
        raise UserError(f"invalid email address {email!r}")

    with _accounts_lock():
        ensure_group(users["group"], system=True)
        return _ensure_user_locked(cfg, username, full_name, email, expire_password, note)


@contextlib.contextmanager
def _accounts_lock():
    """One account change at a time on this host: two `scirepo user add` (or the accounts
    service and an operator) would otherwise pick the same free uid and one would fail."""
    os.makedirs(os.path.dirname(ACCOUNTS_LOCK), exist_ok=True)
    fd = os.open(ACCOUNTS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_user_locked(
    cfg: dict, username: str, full_name: str, email: str, expire_password: bool, note: str
) -> tuple[bool, str | None]:
    users = cfg["users"]
    account = _getpwnam(username)
    password = None
    if account is None:
        own = _getgrnam(username)
        used_uids, used_gids = _used_ids(cfg)
        if own is not None:
            # Left over from an interrupted run (validate_username checked its gid range).
            if own.gr_gid in used_uids:
                raise UserError(f"group {username!r} has gid {own.gr_gid}, already a uid")
            uid = own.gr_gid
        else:
            uid = allocate_uid(used_uids, used_gids, users["uid_min"], users["uid_max"])
            ensure_group(username, gid=uid)
        home = os.path.join(users["home_root"], username)
        _ensure_root_dir(users["home_root"], 0o755)
        _run(
            [
                "useradd",
                "--uid", str(uid),
                "--gid", username,
                "--groups", users["group"],
                "--home-dir", home,
                "--create-home",
                "--shell", users["shell"],
                "--comment", f"{full_name},{clean_gecos_field(note, 'note')},,,{email}",
                # Large uids would make lastlog/faillog huge sparse files.
                "--no-log-init",
                username,
            ]
        )  # fmt: skip
        log.info("created user %s (uid %d)", username, uid)
        password = generate_password()
        set_password(username, password, expire=expire_password)
        account = pwd.getpwnam(username)
    uid = account.pw_uid
    ensure_group(username, gid=uid)
    if account.pw_gid != uid:
        _run(["usermod", "--gid", username, username])
        log.info("set primary group of %s to %s", username, username)
    _ensure_member(username, users["group"])

    home = account.pw_dir
    _ensure_dir(home, uid, uid, 0o700, username)
    workspace = os.path.join(_ensure_area(cfg, "workspaces"), username)
    _ensure_dir(workspace, uid, uid, 0o700, username)
    _ensure_symlink(os.path.join(home, "workspace"), workspace, uid, uid)
    ensure_user_areas(cfg, username)
    return password is not None, password


def set_password(username: str, password: str, expire: bool = False) -> None:
    """Set `username`'s password (chpasswd); `expire`: it must be changed at the next login.

    Without `expire` the password counts as changed today, which ends a pending demand for a
    new password."""
    if "\n" in password or ":" in username:
        raise UserError("a password cannot contain a line break")
    _run(["chpasswd"], stdin=f"{username}:{password}\n")
    if expire:
        _run(["chage", "--lastday", "0", username])


def ensure_authorized_key(username: str, key: str) -> bool:
    """Add public key line `key` to ~username/.ssh/authorized_keys; True if added.

    Runs as root in a directory the user owns, so nothing is followed: ~/.ssh and the file
    must be a real directory and a regular file (or absent)."""
    account = pwd.getpwnam(username)
    ssh_dir = os.path.join(account.pw_dir, ".ssh")
    if os.path.islink(ssh_dir):
        raise UserError(f"{ssh_dir} is a symlink; refusing to write a key through it")
    if not os.path.isdir(ssh_dir):
        os.mkdir(ssh_dir, 0o700)
        os.chown(ssh_dir, account.pw_uid, account.pw_gid)
    path = os.path.join(ssh_dir, "authorized_keys")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "r+") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"{path} is not a regular file")
        os.fchown(fh.fileno(), account.pw_uid, account.pw_gid)
        os.fchmod(fh.fileno(), 0o600)
        if key.strip() in (line.strip() for line in fh.read().splitlines()):
            return False
        fh.write(key.strip() + "\n")
    log.info("added an SSH key for %s", username)
    return True


def remove_user(cfg: dict, username: str, keep_data: bool = True) -> bool:
    """Delete platform user `username` and its group; True if there was one to delete.

    With keep_data (the default) home, workspace, public and scratch folders stay, and
    their uid is not handed to anyone else while they exist; re-adding the same name gives
    them back. Otherwise they are deleted, but only at the places `ensure_user` puts them.
    """
    if "paths" not in cfg:
        raise ValueError("remove_user needs a resolved config (scirepo.config.resolve)")
    if os.geteuid() != 0:
        raise UserError("managing users needs root")
    account = _getpwnam(username)
    group = _getgrnam(username)
    if account is None and group is None:
        return False
    if account is not None and not _in_range(cfg, account.pw_uid):
        raise UserError(f"{username!r} is not a platform user (uid {account.pw_uid}); refusing")
    if account is not None:
        _run(["userdel", username])
        log.info("deleted user %s", username)
    group = _getgrnam(username)  # userdel removes it when USERGROUPS_ENAB is on
    if group is not None and _in_range(cfg, group.gr_gid):
        _run(["groupdel", username])
        log.info("deleted group %s", username)
    if not keep_data:
        own_home = os.path.join(cfg["users"]["home_root"], username)
        areas = [os.path.join(cfg["paths"][k], username) for k in USER_AREAS]
        for path in (own_home, *areas):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                log.info("deleted %s", path)
        if account is not None and os.path.normpath(account.pw_dir) != own_home:
            log.warning("left home %s alone: not under users.home_root", account.pw_dir)
    return True


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add the `user` verb to the `scirepo` command line."""
    parser = subparsers.add_parser("user", help="add or remove platform users (needs root)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="create a platform user, or repair an existing one",
        description="Create USERNAME with a temporary password, printed once. For an "
        "existing user, repair groups and directories; the password is not changed.",
    )
    add.add_argument("username")
    add.add_argument("--name", required=True, help="full name")
    add.add_argument("--email", required=True, help="email address")
    add.add_argument("--admin", action="store_true", help="check that it is in users.admins")
    add.add_argument(
        "--expire-password", action="store_true", help="make the user change it at first login"
    )
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.add_argument(
        "--password-file",
        metavar="FILE",
        help="write the temporary password to FILE (mode 0600) instead of printing it",
    )
    add.set_defaults(func=_cmd_add)

    rm = actions.add_parser("remove", help="delete a platform user (data is kept)")
    rm.add_argument("username")
    rm.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete home, workspace, public and scratch folders",
    )
    rm.set_defaults(func=_cmd_remove)

    for sub in (add, rm):
        # Also accepted after the action; the global option stays the default.
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)


def _site(args) -> dict:
    return sconfig.resolve(sconfig.load(sconfig.locate(args.config)))


def _cmd_add(args) -> int:
    cfg = _site(args)
    created, password = ensure_user(
        cfg, args.username, args.name, args.email, args.admin, args.expire_password
    )
    uid = pwd.getpwnam(args.username).pw_uid
    if created and args.password_file:
        _write_private(Path(args.password_file), f"user: {args.username}\npassword: {password}\n")
        password = None  # never on stdout when a file was asked for
    if args.json:
        result = {"user": args.username, "uid": uid, "created": created, "password": password}
        print(json.dumps(result))
    elif created and args.password_file:
        print(f"created {args.username} (uid {uid}); password in {args.password_file}")
    elif created:
        print(f"user: {args.username}\nuid: {uid}\ntemporary password: {password}")
        print("(shown once; the user changes it with `passwd`)", file=sys.stderr)
    else:
        print(f"{args.username} (uid {uid}): already exists, unchanged")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _cmd_remove(args) -> int:
    cfg = _site(args)
    if remove_user(cfg, args.username, keep_data=not args.delete_data):
        print(f"removed {args.username}")
    else:
        print(f"{args.username}: no such user")
    return 0
