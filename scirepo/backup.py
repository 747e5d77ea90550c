"""Backup and restore of a repository host with restic.

From the operator's machine (inventory: the local host of `make up` by default):

    scirepo backup  --site site.yml [--inventory inv.yml]
    scirepo restore --site site.yml [--inventory inv.yml] [--snapshot ID]

`backup` runs `scirepo backup-host create` on each host as root: it writes a consistent
copy of the hub database, the accounts database and the transfer catalog (SQLite's online
backup), the platform's Unix accounts (passwd, shadow and group entries of the users in
users.uid_min..uid_max, with their password hashes), the site config and the secrets into
a staging directory, and backs that up with restic, together with the users' homes, the
workspaces, public folders and group directories (with the groups' gids; scratch is not
saved) and (backup.data) the data areas, to backup.repository on the host. The
repository is then copied to the operator's machine, `.scirepo/backups/<host>/repo`,
next to its password (`password`, 0600, generated on the first backup and never stored
on the host): a backup that stays on the host is lost with it.

`restore` copies that repository to a freshly deployed host and runs
`scirepo backup-host restore` there: the accounts come back with the same uids and
passwords, then the databases and secrets (the hub, proxy and accounts service are
stopped meanwhile), then the files, with their owners. The admins' first-password files
come back too and are fetched again to .scirepo/credentials/<host>/.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from scirepo import config as sconfig
from scirepo import deploy, progress, remote, users
from scirepo.config import ScirepoError

REPO = Path(__file__).resolve().parent.parent
BACKUPS = REPO / ".scirepo" / "backups"
LOCAL_INVENTORY = REPO / ".scirepo" / "local" / "inventory.json"
HUB_DB = "hub/jupyterhub.sqlite"  # under paths.state
CATALOG_DB = "storage/catalog.db"
SERVICES = ("scirepo-accounts", "scirepo-hub", "scirepo-proxy")
HUB_API = "http://127.0.0.1:8000/hub/api"


class BackupError(ScirepoError):
    """A backup or restore step failed; the message says which."""


# --------------------------------------------------------------------------- on the host


def _restic(
    repo: str, password: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD": password}
    res = subprocess.run(["restic", *args], env=env, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise BackupError(f"restic {args[0]} failed: {res.stderr.strip()[-1500:]}")
    return res


def ensure_repository(repo: str, password: str) -> None:
    """Open the restic repository at `repo`, or make it if there is none. A repository
    that the password does not open is never replaced: that is somebody's backup."""
    opened = _restic(repo, password, "cat", "config", check=False)
    if opened.returncode == 0:
        return
    if Path(repo, "config").exists():
        raise BackupError(
            f"{repo} holds a restic repository that this password does not open (the "
            "password is .scirepo/backups/<host>/password on the machine that made it); "
            "restore that file, or move the repository away to start a new one"
        )
    _restic(repo, password, "init")


def _copy_sqlite(src: Path, dst: Path) -> bool:
    """A consistent copy of a live SQLite database (the online backup API)."""
    if not src.exists():
        return False
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return True


def _shadow() -> dict[str, list[str]]:
    with open("/etc/shadow") as fh:
        return {f[0]: f for f in (line.rstrip("\n").split(":") for line in fh) if f[0]}


def _accounts(cfg: dict) -> list[dict]:
    """The platform users, as much as `_restore_accounts` needs to make them again."""
    lo, hi = cfg["users"]["uid_min"], cfg["users"]["uid_max"]
    shadow = _shadow()
    out = []
    for p in pwd.getpwall():
        if not lo <= p.pw_uid <= hi:
            continue
        own = grp.getgrgid(p.pw_gid)
        out.append({
            "name": p.pw_name, "uid": p.pw_uid, "gid": p.pw_gid, "group": own.gr_name,
            "gecos": p.pw_gecos, "home": p.pw_dir, "shell": p.pw_shell,
            "shadow": shadow.get(p.pw_name, [])[1:],
            "groups": sorted(g.gr_name for g in grp.getgrall() if p.pw_name in g.gr_mem),
        })  # fmt: skip
    return out


def _paths(cfg: dict, accounts: list[dict]) -> list[str]:
    paths = [a["home"] for a in accounts if os.path.isdir(a["home"])]
    backup = cfg["backup"]
    if backup["workspaces"]:
        paths += [cfg["paths"]["workspaces"], cfg["paths"]["public"], cfg["paths"]["groups"]]
    if backup["data"]:
        paths += [cfg["paths"]["data"], cfg["paths"]["upload"], cfg["paths"]["software"]]
    return [p for p in paths if os.path.exists(p)]


def _platform_groups(cfg: dict) -> list[str]:
    """The platform's own groups (not users' nor `scirepo group`'s) that exist here."""
    names = (cfg["users"]["group"], cfg["storage"]["data_managers_group"])
    return [n for n in dict.fromkeys(names) if users._getgrnam(n) is not None]


def regroup(paths: list[str], moved: dict[int, int]) -> int:
    """Give every file below `paths` whose gid is a key of `moved` the gid it maps to,
    keeping its mode (a chown drops setgid bits); links are changed, never followed.
    Returns how many files changed."""
    changed = 0

    def one(path: str) -> None:
        nonlocal changed
        st = os.lstat(path)
        if st.st_gid in moved:
            os.lchown(path, -1, moved[st.st_gid])
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode))
            changed += 1

    for top in dict.fromkeys(paths):
        if not os.path.lexists(top):
            continue
        one(top)
        if os.path.isdir(top) and not os.path.islink(top):
            for root, dirs, files in os.walk(top):
                for name in dirs + files:
                    one(os.path.join(root, name))
    return changed


def host_create(cfg: dict, password: str) -> str:
    """Back this host up to backup.repository; return restic's summary line."""
    repo = cfg["backup"]["repository"]
    state = Path(cfg["paths"]["state"])
    staging = state / "backup" / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    (state / "backup").chmod(0o700)
    from scirepo.accounts.store import db_target

    accounts_db = db_target(cfg)
    _copy_sqlite(state / HUB_DB, staging / "jupyterhub.sqlite")
    if not accounts_db.startswith("postgresql://"):
        _copy_sqlite(Path(accounts_db), staging / "accounts.db")
    _copy_sqlite(state / CATALOG_DB, staging / "catalog.db")
    accounts = _accounts(cfg)
    fd = os.open(staging / "accounts.json", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(accounts, fh, indent=1)
    # The groups of `scirepo group` with their gids: their directories come back owned by
    # those gids, and the members' group lists name them.
    from scirepo.storage.groups import list_groups

    with open(staging / "groups.json", "w") as fh:
        json.dump([{"name": g["name"], "gid": g["gid"]} for g in list_groups(cfg)], fh)
    # The platform's own groups are system groups, whose gids a fresh host may number
    # otherwise: the restore maps the files' gids (restic restores numbers) by these names.
    with open(staging / "platform_groups.json", "w") as fh:
        json.dump({name: grp.getgrnam(name).gr_gid for name in _platform_groups(cfg)}, fh)
    shutil.copytree(cfg["paths"]["secrets"], staging / "secrets")
    shutil.copy2(f"{cfg['paths']['etc']}/site.json", staging / "site.json")

    Path(repo).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_repository(repo, password)
    res = _restic(repo, password, "backup", "--host", "scirepo", "--tag", "scirepo",
                  str(staging), *_paths(cfg, accounts))  # fmt: skip
    shutil.rmtree(staging)
    summary = [ln for ln in res.stdout.splitlines() if ln.startswith("snapshot ")]
    return summary[-1] if summary else res.stdout.strip().splitlines()[-1]


def _restore_accounts(cfg: dict, accounts: list[dict]) -> None:
    for a in accounts:
        try:
            existing = pwd.getpwnam(a["name"])
        except KeyError:
            existing = None
        if existing and existing.pw_uid != a["uid"]:
            raise BackupError(
                f"{a['name']} exists here with uid {existing.pw_uid}, the backup has "
                f"{a['uid']}: remove it first (scirepo user remove)"
            )
        users.ensure_group(a["group"], gid=a["gid"])
        for name in a["groups"]:
            users.ensure_group(name, system=True)
        if existing is None:
            users._run([
                "useradd", "--uid", str(a["uid"]), "--gid", str(a["gid"]), "--home-dir",
                a["home"], "--no-create-home", "--shell", a["shell"], "--comment", a["gecos"],
                "--no-log-init", a["name"],
            ])  # fmt: skip
        if a["groups"]:
            users._run(["usermod", "--groups", ",".join(a["groups"]), a["name"]])
        if a["shadow"]:
            users._run(["chpasswd", "--encrypted"], stdin=f"{a['name']}:{a['shadow'][0]}\n")
            if a["shadow"][1]:  # the day of the last change; 0: must change at next login
                users._run(["chage", "--lastday", a["shadow"][1], a["name"]])


def host_restore(cfg: dict, password: str, snapshot: str = "latest") -> None:
    repo = cfg["backup"]["repository"]
    state = Path(cfg["paths"]["state"])
    staging = state / "backup" / "staging"
    work = Path(tempfile.mkdtemp(prefix="restore-", dir=state))
    try:
        _restic(repo, password, "restore", snapshot, "--target", str(work),
                "--include", str(staging))  # fmt: skip
        saved = work / staging.relative_to("/")
        accounts = json.loads((saved / "accounts.json").read_text())
        if (saved / "groups.json").exists():  # backups from before `scirepo group` lack it
            for group in json.loads((saved / "groups.json").read_text()):
                users.ensure_group(group["name"], gid=group["gid"])
        progress.say(f"restoring {len(accounts)} accounts")
        _restore_accounts(cfg, accounts)
        subprocess.run(["systemctl", "stop", *SERVICES], check=True)
        from scirepo.accounts.store import db_target

        accounts_db = db_target(cfg)
        pairs = [("jupyterhub.sqlite", state / HUB_DB), ("catalog.db", state / CATALOG_DB)]
        if not accounts_db.startswith("postgresql://"):
            pairs.append(("accounts.db", Path(accounts_db)))
        for name, target in pairs:
            if (saved / name).exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                for stale in (f"{target}-wal", f"{target}-shm"):
                    Path(stale).unlink(missing_ok=True)
                shutil.copy2(saved / name, target)
                os.chmod(target, 0o600)
        for item in (saved / "secrets").iterdir():
            shutil.copy2(item, Path(cfg["paths"]["secrets"]) / item.name)
            os.chmod(Path(cfg["paths"]["secrets"]) / item.name, 0o600)
        paths = _paths(cfg, accounts)
        includes = [arg for p in paths for arg in ("--include", p)]
        homes = [a["home"] for a in accounts]
        includes += [arg for h in homes if h not in paths for arg in ("--include", h)]
        # restic 0.14 does not replace an existing symlink: the deploy and ensure_user
        # made ~/workspace links that the backup holds too.
        for a in accounts:
            workspace = Path(cfg["paths"]["workspaces"]) / a["name"]
            for link in (Path(a["home"]) / "workspace", workspace / "public",
                         workspace / "scratch"):  # fmt: skip
                if link.is_symlink():
                    link.unlink()
        _restic(repo, password, "restore", snapshot, "--target", "/", *includes)
        if (saved / "platform_groups.json").exists():  # older backups lack it
            then = json.loads((saved / "platform_groups.json").read_text())
            now = {name: grp.getgrnam(name).gr_gid for name in _platform_groups(cfg)}
            moved = {gid: now[name] for name, gid in then.items() if now.get(name, gid) != gid}
            if moved:
                progress.say(f"mapping the restored files' group ids {moved}")
                regroup([*paths, *homes], moved)
        # Scratch folders are not saved, and servers need them (a bind mount's source).
        from scirepo.storage.areas import repair

        repair(cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["systemctl", "start", *reversed(SERVICES)], check=False)
    progress.wait_for("the hub after the restore", _hub_answers, deadline=180)


def _hub_answers() -> bool:
    try:
        with urllib.request.urlopen(HUB_API, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- operator side


def _password(host: str) -> str:
    path = BACKUPS / host / "password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(BACKUPS, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _split(repo: str) -> tuple[str, str]:
    return os.path.dirname(repo.rstrip("/")), os.path.basename(repo.rstrip("/"))


def backup(site: Path, inventory: Path) -> int:
    cfg = sconfig.resolve(sconfig.load(site))
    parent, name = _split(cfg["backup"]["repository"])
    for host, hv in remote.hosts(inventory).items():
        target = remote.Remote(host, hv, cfg["ssh"]["deploy_user"])
        password = _password(host)
        progress.say(f"{host}: backing up")
        res = target.run_root(["scirepo", "backup-host", "create"], stdin=password.encode())
        progress.say(f"{host}: {res.stdout.decode().strip()}")
        local = BACKUPS / host
        fresh = local / "repo.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        ssh = subprocess.Popen(
            target.command(["tar", "-C", parent, "-cf", "-", name]), stdout=subprocess.PIPE
        )
        untar = subprocess.run(["tar", "-C", str(fresh), "-xf", "-"], stdin=ssh.stdout,
                               check=False)  # fmt: skip
        if ssh.wait() != 0 or untar.returncode != 0:
            raise BackupError(f"{host}: copying the restic repository here failed")
        old = local / "repo"
        if old.exists():
            old.rename(local / "repo.old")
        (fresh / name).rename(old)
        shutil.rmtree(fresh)
        shutil.rmtree(local / "repo.old", ignore_errors=True)
        print(f"{host}: backup in {old} (password: {local / 'password'})")
    return 0


def restore(site: Path, inventory: Path, snapshot: str) -> int:
    cfg = sconfig.resolve(sconfig.load(site))
    parent, name = _split(cfg["backup"]["repository"])
    for host, hv in remote.hosts(inventory).items():
        target = remote.Remote(host, hv, cfg["ssh"]["deploy_user"])
        local = BACKUPS / host / "repo"
        if not local.is_dir():
            raise BackupError(f"no backup of {host} here ({local}); run `scirepo backup` first")
        password = _password(host)
        progress.say(f"{host}: copying the restic repository to the host")
        tar = subprocess.Popen(["tar", "-C", str(local.parent), "-cf", "-", "repo"],
                               stdout=subprocess.PIPE)  # fmt: skip
        unpack = (
            f"set -e; mkdir -p {parent}; chmod 700 {parent}; rm -rf {parent}/.incoming;"
            f" mkdir {parent}/.incoming; tar -C {parent}/.incoming -xf -;"
            f" rm -rf {parent}/{name}; mv {parent}/.incoming/repo {parent}/{name};"
            f" rmdir {parent}/.incoming"
        )
        ssh = subprocess.run(target.command(["sh", "-c", unpack]), stdin=tar.stdout,
                             check=False)  # fmt: skip
        if tar.wait() != 0 or ssh.returncode != 0:
            raise BackupError(f"{host}: copying the restic repository to the host failed")
        progress.say(f"{host}: restoring {snapshot}")
        target.run_root(["scirepo", "backup-host", "restore", "--snapshot", snapshot],
                        stdin=password.encode())  # fmt: skip
        creds = deploy.CREDENTIALS / host
        for admin in cfg["users"]["admins"]:
            first = f"{cfg['paths']['secrets']}/initial-password-{admin}"
            res = target.run_root(["cat", first], check=False)
            if res.returncode == 0:
                creds.mkdir(parents=True, exist_ok=True)
                path = creds / f"admin-{admin}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(res.stdout)
        print(f"{host}: restored from {snapshot}")
    return 0


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    for verb, func, text in (
        ("backup", _cmd_backup, "back up the hosts of an inventory with restic (to this machine)"),
        ("restore", _cmd_restore, "restore a freshly deployed host from its last backup"),
    ):
        sub = subparsers.add_parser(verb, help=text, description=text)
        sub.add_argument("--site", type=Path, default=Path("site.yml"))
        sub.add_argument("--inventory", "-i", type=Path, default=LOCAL_INVENTORY,
                         help="Ansible inventory (default: the local host of make up)")  # fmt: skip
        if verb == "restore":
            sub.add_argument("--snapshot", default="latest", help="restic snapshot id")
        sub.set_defaults(func=func)

    host = subparsers.add_parser("backup-host", help="the host side of backup and restore (root)")
    actions = host.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="back this host up (restic password on stdin)")
    create.set_defaults(func=_cmd_host_create)
    rest = actions.add_parser("restore", help="restore this host (restic password on stdin)")
    rest.add_argument("--snapshot", default="latest")
    rest.set_defaults(func=_cmd_host_restore)
    for sub in (create, rest):
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)


def _cmd_backup(args) -> int:
    return backup(args.site, args.inventory)


def _cmd_restore(args) -> int:
    return restore(args.site, args.inventory, args.snapshot)


def _host_cfg(args) -> tuple[dict, str]:
    if os.geteuid() != 0:
        raise BackupError("backup-host needs root")
    password = sys.stdin.readline().strip()
    if not password:
        raise BackupError("give the restic password on stdin")
    return sconfig.resolve(sconfig.load(sconfig.locate(args.config))), password


def _cmd_host_create(args) -> int:
    cfg, password = _host_cfg(args)
    print(host_create(cfg, password))
    return 0


def _cmd_host_restore(args) -> int:
    cfg, password = _host_cfg(args)
    host_restore(cfg, password, args.snapshot)
    return 0
