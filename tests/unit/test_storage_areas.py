"""Tests of the storage areas with real Unix accounts, groups and ACLs on this machine.

The permissions matrix (`scirepo.storage.areas.PERMISSIONS`, mirrored by the table in
storage/README.md) is checked cell by cell: each check runs as the real account with
`setpriv --reuid --regid --init-groups` (no capabilities left) and lists, reads or writes
in a tree built exactly as the storage role and `scirepo.users` build it. Then groups
(`scirepo group`), the users' public and scratch folders, usage and quotas (with a real
SMTP server), the scratch cleaning and the repair.

Needs root. Accounts and groups get ids 47000-47999 and names `sta<random>`; the tree
lives in a fresh directory under /tmp (0755: pytest's own tmp_path cannot be entered by
other users); finalizers delete all of it, even when a test fails.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from scirepo import config, users
from scirepo.storage import areas, groups, scratch, usage
from scirepo.storage.groups import GroupError

REPO = Path(__file__).resolve().parents[2]
UID_MIN, UID_MAX = 47000, 47099
GID_MIN, GID_MAX = 47100, 47199
OUTSIDER_UID, FOREIGN_GID = 47950, 47960

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, setfacl)")


# --------------------------------------------------------------------------- the world


def as_user(name: str, script: str, *args: str, umask: str = "022") -> subprocess.CompletedProcess:
    """Run `sh -c script` as account `name`, with its groups and no capabilities."""
    return subprocess.run(
        ["setpriv", f"--reuid={name}", f"--regid={pwd.getpwnam(name).pw_gid}", "--init-groups",
         "--", "sh", "-c", f"umask {umask}; {script}", "sh", *args],
        capture_output=True, text=True, check=False, cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": pwd.getpwnam(name).pw_dir},
    )  # fmt: skip


def make_cfg(base: str, tag: str, admins: list[str]) -> dict:
    data = {
        "site": {"name": "storage test", "contact_email": "help@example.org"},
        "users": {
            "group": f"sta{tag}u",
            "uid_min": UID_MIN,
            "uid_max": UID_MAX,
            "home_root": f"{base}/home",
            "admins": admins,
        },
        "storage": {
            "root": f"{base}/srv",
            "sites": [{"name": "s1"}],
            "data_managers_group": f"sta{tag}d",
            "groups": {"gid_min": GID_MIN, "gid_max": GID_MAX},
            "quota": {"soft": "0"},
        },
    }
    return config.resolve(config.validate(data))


def apply_layout(cfg: dict) -> None:
    """What the storage role's first task does with `scirepo.layout`."""
    for area in cfg["layout"]:
        os.makedirs(area["path"], exist_ok=True)
        os.chown(
            area["path"], pwd.getpwnam(area["owner"]).pw_uid, grp.getgrnam(area["group"]).gr_gid
        )
        os.chmod(area["path"], int(area["mode"], 8))


class World(SimpleNamespace):
    """The accounts of the matrix by kind, the shared group and the config."""

    def path(self, area: str) -> str:
        template = areas.PERMISSIONS[area][0]
        rel = template.replace("<owner>", self.kinds["owner"]).replace("<group>", self.group)
        return os.path.join(self.cfg["paths"]["root"], rel.replace("<site>", "s1"))


@pytest.fixture(scope="module")
def world():
    tag = secrets.token_hex(3)
    base = tempfile.mkdtemp(prefix="sta-", dir="/tmp")
    os.chmod(base, 0o755)  # noqa: S103 - other accounts must reach the tree
    names = {kind: f"sta{tag}{kind[:3]}" for kind in areas.KINDS}
    cfg = make_cfg(base, tag, admins=[names["admin"]])
    made_groups = [cfg["users"]["group"], cfg["storage"]["data_managers_group"]]
    group = f"sta{tag}grp"
    try:
        users.ensure_group(cfg["users"]["group"], system=True)
        users.ensure_group(cfg["storage"]["data_managers_group"], system=True)
        apply_layout(cfg)
        for kind, name in names.items():
            if kind == "outsider":
                subprocess.run(["useradd", "--uid", str(OUTSIDER_UID), "--user-group",
                                "--no-create-home", "--no-log-init", name], check=True)  # fmt: skip
            else:
                users.ensure_user(cfg, name, kind.title(), f"{name}@example.org",
                                  admin=kind == "admin")  # fmt: skip
        subprocess.run(["usermod", "-aG", cfg["storage"]["data_managers_group"],
                        names["manager"]], check=True)  # fmt: skip
        groups.create_group(cfg, group)
        groups.set_members(cfg, group, add=[names["owner"], names["member"]])
        w = World(cfg=cfg, kinds=names, group=group, base=base, tag=tag)
        # The owner's file in each area, made the way the owner makes files.
        for area, (_p, row) in areas.PERMISSIONS.items():
            target = os.path.join(w.path(area), "owners-file")
            if row["owner"] is None:  # site data and software: files of the transfer
                Path(target).write_text("data\n")
                os.chown(target, 0, grp.getgrnam(cfg["storage"]["data_managers_group"]).gr_gid)
                os.chmod(target, 0o444)
            else:
                done = as_user(names["owner"], 'echo mine > "$1"', target)
                assert done.returncode == 0, done.stderr
        yield w
    finally:
        for name in names.values():
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        for name in (*made_groups, group):
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the matrix


def attempt(w: World, kind: str, area: str, op: str) -> bool:
    directory = w.path(area)
    script = {
        "list": 'ls -- "$1" >/dev/null',
        "read": 'cat -- "$1/owners-file" >/dev/null',
        "write": 'echo x > "$1/new-$2"',
    }[op]
    result = as_user(w.kinds[kind], script, directory, f"{kind}-{secrets.token_hex(4)}")
    return result.returncode == 0


def test_checks_run_without_privileges(world):
    for kind, name in world.kinds.items():
        assert as_user(name, "cat /etc/shadow >/dev/null").returncode != 0, kind
        assert as_user(name, "id -u").stdout.strip() == str(pwd.getpwnam(name).pw_uid)


@pytest.mark.parametrize(
    "area,kind,op,allowed",
    list(areas.cells()),
    ids=[f"{a}-{k}-{o}" for a, k, o, _ in areas.cells()],
)
def test_permissions_matrix(world, area, kind, op, allowed):
    assert attempt(world, kind, area, op) is allowed


def test_readme_table_is_the_matrix():
    readme = (REPO / "storage" / "README.md").read_text()
    assert areas.matrix_markdown() in readme, (
        "storage/README.md: paste scirepo.storage.areas.matrix_markdown() in place of the table"
    )


def test_public_parent_is_for_platform_users_only(world):
    public = world.cfg["paths"]["public"]
    assert as_user(world.kinds["other"], 'ls -- "$1"', public).stdout.split() == sorted(
        n for k, n in world.kinds.items() if k != "outsider"
    )
    assert as_user(world.kinds["outsider"], 'ls -- "$1"', public).returncode != 0


def test_workspace_stays_private_and_links_public_and_scratch(world):
    owner = world.kinds["owner"]
    p = world.cfg["paths"]
    workspace = os.path.join(p["workspaces"], owner)
    assert stat.S_IMODE(os.stat(workspace).st_mode) == 0o700
    assert os.readlink(os.path.join(workspace, "public")) == os.path.join(p["public"], owner)
    assert os.readlink(os.path.join(workspace, "scratch")) == os.path.join(p["scratch"], owner)
    # Through the link, as the owner, from the home.
    done = as_user(owner, 'echo hi > ~/workspace/public/hello && cat "$1/hello"',
                   os.path.join(p["public"], owner))  # fmt: skip
    assert done.stdout == "hi\n", done.stderr
    # Another user reads it at the public path, not through the owner's workspace.
    other = world.kinds["other"]
    assert as_user(other, 'cat "$1/hello"', os.path.join(p["public"], owner)).stdout == "hi\n"
    assert as_user(other, 'ls "$1"', workspace).returncode != 0


# --------------------------------------------------------------------------- groups


def test_group_files_stay_group_writable_whatever_the_umask(world):
    d = world.path("group")
    owner, member = world.kinds["owner"], world.kinds["member"]
    made = as_user(owner, 'mkdir "$1/sub" && echo a > "$1/sub/f" && echo b > "$1/g"', d,
                   umask="077")  # fmt: skip
    assert made.returncode == 0, made.stderr
    gid = grp.getgrnam(world.group).gr_gid
    for rel in ("sub", "sub/f", "g"):
        assert os.stat(os.path.join(d, rel)).st_gid == gid, rel
    assert os.stat(os.path.join(d, "sub")).st_mode & stat.S_ISGID
    changed = as_user(member, 'echo c >> "$1/sub/f" && echo d > "$1/sub/new" && rm "$1/g"', d)
    assert changed.returncode == 0, changed.stderr
    assert Path(d, "sub/f").read_text() == "a\nc\n"
    acl = subprocess.run(["getfacl", "-p", "--omit-header", os.path.join(d, "sub")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"default:group:{world.group}:rwx" in acl
    assert as_user(world.kinds["other"], 'cat "$1/sub/f"', d).returncode != 0


def test_group_dir_owner_mode_and_acl(world):
    d = world.path("group")
    st = os.stat(d)
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam(world.group).gr_gid)
    assert stat.S_IMODE(st.st_mode) == 0o2770
    assert GID_MIN <= st.st_gid <= GID_MAX
    acl = subprocess.run(["getfacl", "-p", "--omit-header", d], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    for entry in (f"group:{world.group}:rwx", "mask::rwx", "other::---",
                  f"default:group:{world.group}:rwx", "default:mask::rwx"):  # fmt: skip
        assert entry in acl, acl


def test_group_create_twice_changes_nothing(world):
    before = os.stat(world.path("group"))
    assert groups.create_group(world.cfg, world.group) is False
    assert groups.ensure_group_dir(world.cfg, world.group) is False
    after = os.stat(world.path("group"))
    assert (before.st_ino, before.st_mode, before.st_gid) == (after.st_ino, after.st_mode,
                                                               after.st_gid)  # fmt: skip
    assert groups.set_members(world.cfg, world.group, add=[world.kinds["owner"]]) == ([], [])


@pytest.mark.parametrize(
    "name,message",
    [
        ("Bad", "invalid group name 'Bad'"),
        ("a b", "invalid group name"),
        ("root", "reserved name"),
        ("scirepo-x", "reserved name"),
    ],
)
def test_group_bad_names(world, name, message):
    with pytest.raises(GroupError, match=message):
        groups.create_group(world.cfg, name)


def test_group_name_clashes(world):
    cfg = world.cfg
    with pytest.raises(GroupError, match="is a platform group of the site config"):
        groups.create_group(cfg, cfg["users"]["group"])
    with pytest.raises(GroupError, match="is the name of a user"):
        groups.create_group(cfg, world.kinds["other"])
    foreign = f"sta{world.tag}for"
    subprocess.run(["groupadd", "--gid", str(FOREIGN_GID), foreign], check=True)
    try:
        with pytest.raises(GroupError, match=rf"exists with gid {FOREIGN_GID}, outside"):
            groups.create_group(cfg, foreign)
        with pytest.raises(GroupError, match="not a platform group"):
            groups.set_members(cfg, foreign, add=[world.kinds["other"]])
        with pytest.raises(GroupError, match="not a platform group"):
            groups.delete_group(cfg, foreign)
        assert not os.path.exists(groups.group_dir(cfg, foreign))
        assert grp.getgrnam(foreign).gr_mem == []
    finally:
        subprocess.run(["groupdel", foreign], check=False)


def test_group_bad_members_change_nothing(world):
    cfg, g = world.cfg, world.group
    before = grp.getgrnam(g).gr_mem
    with pytest.raises(GroupError, match=r"'nosuchsta' \(no such user\); nothing changed"):
        groups.set_members(cfg, g, add=[world.kinds["other"], "nosuchsta"])
    with pytest.raises(GroupError, match=r"not a platform user"):
        groups.set_members(cfg, g, add=[world.kinds["outsider"]])
    with pytest.raises(GroupError, match="no group 'stanogroup'"):
        groups.set_members(cfg, "stanogroup", add=[world.kinds["other"]])
    assert grp.getgrnam(g).gr_mem == before


def test_group_cli_lifecycle(world, tmp_path, run_cli):
    cfg = world.cfg
    site = tmp_path / "site.yml"
    site.write_text(yaml.safe_dump({k: cfg[k] for k in ("site", "users", "storage")}))
    name, other, member = f"sta{world.tag}cli", world.kinds["other"], world.kinds["member"]
    try:
        code, out, err = run_cli("--config", site, "group", "create", name)
        assert code == 0 and "created" in out, err
        gid = grp.getgrnam(name).gr_gid
        code, out, err = run_cli("--config", site, "group", "create", name)
        assert code == 0 and "already exists" in out
        code, out, err = run_cli("--config", site, "group", "add", name, other, member)
        assert code == 0 and f"added to {name}: {other} {member}" in out, err
        assert "next server start or SSH login" in out
        assert sorted(grp.getgrnam(name).gr_mem) == sorted([other, member])
        code, out, err = run_cli("--config", site, "group", "add", name, "nosuchsta")
        assert code == 2 and "'nosuchsta' (no such user)" in err
        code, out, err = run_cli("--config", site, "group", "remove", name, member)
        assert code == 0 and f"removed from {name}: {member}" in out
        assert grp.getgrnam(name).gr_mem == [other]
        code, out, _ = run_cli("--config", site, "group", "list")
        assert f"{name}\t{gid}\t{other}\t{groups.group_dir(cfg, name)}" in out.splitlines()
        # The member's file survives deletion of the group, and comes back with it.
        assert as_user(other, 'echo kept > "$1/f"', groups.group_dir(cfg, name)).returncode == 0
        code, out, _ = run_cli("--config", site, "group", "delete", name)
        assert code == 0 and "kept" in out
        assert os.stat(groups.group_dir(cfg, name)).st_gid == gid
        # A new group elsewhere does not get the kept directory's gid...
        stranger = f"sta{world.tag}str"
        groups.create_group(cfg, stranger)
        assert grp.getgrnam(stranger).gr_gid != gid
        groups.delete_group(cfg, stranger, delete_data=True)
        assert not os.path.exists(groups.group_dir(cfg, stranger))
        # ...the same name does.
        assert run_cli("--config", site, "group", "create", name)[0] == 0
        assert grp.getgrnam(name).gr_gid == gid
        assert Path(groups.group_dir(cfg, name), "f").read_text() == "kept\n"
        code, out, _ = run_cli("--config", site, "group", "delete", name, "--delete-data")
        assert code == 0 and not os.path.exists(groups.group_dir(cfg, name))
        assert run_cli("--config", site, "group", "delete", name)[1] == f"{name}: no such group\n"
    finally:
        for g in (name, f"sta{world.tag}str"):
            subprocess.run(["groupdel", g], capture_output=True, check=False)


def test_group_file_in_place_of_the_directory_is_refused(world):
    name = f"sta{world.tag}blk"
    path = groups.group_dir(world.cfg, name)
    os.symlink("/etc", path)
    try:
        with pytest.raises(GroupError, match="is not a directory"):
            groups.create_group(world.cfg, name)
        with pytest.raises(KeyError):
            grp.getgrnam(name)  # nothing half-made
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- user folders


def test_user_folders_repair_and_second_run(world):
    cfg, owner = world.cfg, world.kinds["owner"]
    public = os.path.join(cfg["paths"]["public"], owner)
    link = os.path.join(cfg["paths"]["workspaces"], owner, "scratch")
    assert areas.repair(cfg)["changed"] == 0
    os.chmod(public, 0o700)
    os.unlink(link)
    os.chmod(world.path("group"), 0o777)  # noqa: S103 - the wrong mode to repair
    subprocess.run(["setfacl", "-b", world.path("group")], check=True)
    result = areas.repair(cfg)
    assert result["users"] == [owner] and result["groups"] == [world.group]
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o755
    assert os.readlink(link) == os.path.join(cfg["paths"]["scratch"], owner)
    assert stat.S_IMODE(os.stat(world.path("group")).st_mode) == 0o2770
    assert attempt(world, "member", "group", "write")
    assert areas.repair(cfg)["changed"] == 0


def test_users_own_entry_named_public_is_left_alone(world, caplog):
    cfg, owner = world.cfg, world.kinds["owner"]
    link = os.path.join(cfg["paths"]["workspaces"], owner, "public")
    os.unlink(link)
    Path(link).write_text("my notes\n")
    try:
        assert users.ensure_user_areas(cfg, owner) is False
        assert Path(link).read_text() == "my notes\n"
        assert "is not a link to" in caplog.text
    finally:
        os.unlink(link)
        users.ensure_user_areas(cfg, owner)
    assert os.path.islink(link)


def test_remove_user_deletes_public_and_scratch_only_when_asked(world):
    cfg = world.cfg
    name = f"sta{world.tag}tmp"
    try:
        users.ensure_user(cfg, name, "Temp", "t@example.org")
        folders = [os.path.join(cfg["paths"][k], name) for k in ("public", "scratch")]
        assert all(os.path.isdir(f) for f in folders)
        users.remove_user(cfg, name)
        assert all(os.path.isdir(f) for f in folders)
        users.ensure_user(cfg, name, "Temp", "t@example.org")
        users.remove_user(cfg, name, keep_data=False)
        assert not any(os.path.exists(f) for f in folders)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_container_mounts():
    paths = config.resolve(config.validate({"site": {"name": "x"}}))["paths"]
    mounts = areas.container_mounts(paths, "alice", "/home/alice")
    got = {m["target"]: m["read_only"] for m in mounts}
    assert all(m["source"] == m["target"] and m["type"] == "bind" for m in mounts)
    assert got == {
        "/home/alice": False,
        "/srv/scirepo/workspaces/alice": False,
        "/srv/scirepo/data": True,
        "/srv/scirepo/software": True,
        "/srv/scirepo/upload": False,
        "/srv/scirepo/public": True,
        "/srv/scirepo/public/alice": False,
        "/srv/scirepo/groups": False,
        "/srv/scirepo/scratch/alice": False,
    }


# --------------------------------------------------------------------------- usage, quota


def blocks_under(path: str, uid: int) -> int:
    """Independent count: bytes of blocks of entries below `path` owned by `uid`."""
    top = os.lstat(path)
    total, seen = (top.st_blocks * 512 if top.st_uid == uid else 0), set()
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(parent, name))
            if st.st_uid == uid and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def test_usage_counts_blocks_by_owner_without_following_links(world):
    cfg, owner = world.cfg, world.kinds["owner"]
    uid = pwd.getpwnam(owner).pw_uid
    ws = os.path.join(cfg["paths"]["workspaces"], owner)
    made = as_user(owner, 'head -c 3000000 /dev/urandom > "$1/big" && ln "$1/big" "$2/big-link"'
                   ' && truncate -s 10G "$1/sparse" && ln -s /usr "$1/usr-link"',
                   ws, os.path.join(cfg["paths"]["public"], owner))  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        report = usage.usage(cfg)
        row = report["users"][owner]
        big = os.stat(os.path.join(ws, "big")).st_blocks * 512
        assert big >= 3_000_000
        # The hard link in public counts once (in the workspace, walked first).
        assert row["workspace"] == blocks_under(ws, uid)
        assert row["public"] == blocks_under(os.path.join(cfg["paths"]["public"], owner), uid) - big
        assert row["workspace"] < 4_000_000  # neither the sparse 10G nor /usr
        assert row["groups"] == blocks_under(cfg["paths"]["groups"], uid) > 0
        assert row["total"] == sum(row[a] for a in usage.AREAS)
        assert report["groups"][world.group] > 0
        assert report["errors"] == []
        assert set(report["users"]) == {n for k, n in world.kinds.items() if k != "outsider"}
    finally:
        for f in (f"{ws}/big", f"{ws}/sparse", f"{ws}/usr-link",
                  f"{cfg['paths']['public']}/{owner}/big-link"):  # fmt: skip
            os.unlink(f)


def test_usage_cli_json(world, tmp_path, run_cli):
    site = tmp_path / "site.yml"
    site.write_text(yaml.safe_dump({k: world.cfg[k] for k in ("site", "users", "storage")}))
    code, out, err = run_cli("--config", site, "storage", "usage", "--json")
    assert code == 0, err
    report = yaml.safe_load(out)
    assert world.kinds["owner"] in report["users"] and "workspace" in report["areas"]
    code, out, _ = run_cli("--config", site, "storage", "usage")
    assert code == 0 and out.splitlines()[0].split() == ["user", *usage.AREAS, "total", "quota"]


@pytest.mark.parametrize(
    "text,size", [("0", 0), ("512", 512), ("2K", 2048), ("1.5G", 3 * 2**29), ("1T", 2**40)]
)
def test_parse_size(text, size):
    assert usage.parse_size(text) == size


@pytest.fixture
def smtp_inbox():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
            import email

            self.messages.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


def test_quota_notice_mail_and_login_message(world, smtp_inbox, tmp_path):
    from scirepo.accounts.mail import Smtp

    cfg = {**world.cfg, "storage": {**world.cfg["storage"]}}
    owner, other = world.kinds["owner"], world.kinds["other"]
    cfg["storage"]["quota"] = {**cfg["storage"]["quota"], "soft": "100G", "users": {owner: "1M"}}
    notices = os.path.join(world.base, "quota")
    smtp = Smtp("127.0.0.1", smtp_inbox.port)
    big = os.path.join(cfg["paths"]["scratch"], owner, "big")
    assert as_user(owner, 'head -c 2000000 /dev/zero > "$1"', big).returncode == 0

    result = usage.quota_check(cfg, notices, smtp=smtp)
    assert result["over"] == [owner] and result["mailed"] == [owner]
    notice = os.path.join(notices, owner)
    st = os.stat(notice)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, pwd.getpwnam(owner).pw_gid,
                                                                0o640)  # fmt: skip
    assert stat.S_IMODE(os.stat(notices).st_mode) == 0o711
    (mail,) = smtp_inbox.messages
    assert mail["To"] == f"{owner}@example.org" and "over its quota" in mail["Subject"]
    assert "1.0 MiB" in mail.get_payload()
    assert not os.path.exists(os.path.join(notices, other))

    # The login script shows the notice to its user only.
    template = (REPO / "ansible/roles/storage/templates/scirepo-quota.sh.j2").read_text()
    script = tmp_path / "scirepo-quota.sh"
    script.write_text(template.replace("{{ storage_quota_dir }}", notices))
    script.chmod(0o644)
    shutil.copy(script, os.path.join(world.base, "profile.sh"))
    profile = os.path.join(world.base, "profile.sh")
    shown = as_user(owner, '. "$1"', profile)
    assert shown.returncode == 0 and "over your soft quota of 1.0 MiB" in shown.stderr
    assert as_user(other, '. "$1"', profile).stderr == ""
    assert as_user(other, 'cat "$1"', notice).returncode != 0
    assert as_user(other, 'ls "$1"', notices).returncode != 0

    # Still over: the notice stays, no second mail before remind_days.
    assert usage.quota_check(cfg, notices, smtp=smtp)["mailed"] == []
    assert len(smtp_inbox.messages) == 1 and os.path.exists(notice)
    # A failing mail server is reported and retried at the next check.
    later = usage.dt.datetime.now(usage.dt.UTC) + usage.dt.timedelta(days=8)
    bad = Smtp("127.0.0.1", 1)
    result = usage.quota_check(cfg, notices, smtp=bad, now=later)
    assert owner in result["mail_errors"] and result["mailed"] == []
    assert usage.quota_check(cfg, notices, smtp=smtp, now=later)["mailed"] == [owner]
    # Back under quota: the notice goes.
    os.unlink(big)
    assert usage.quota_check(cfg, notices, smtp=smtp)["over"] == []
    assert not os.path.exists(notice)
    assert as_user(owner, '. "$1"', profile).stderr == ""


# --------------------------------------------------------------------------- scratch


def test_scratch_clean(world):
    cfg, owner = world.cfg, world.kinds["owner"]
    top = os.path.join(cfg["paths"]["scratch"], owner)
    outside = os.path.join(world.base, "outside")
    os.makedirs(f"{outside}/dir", exist_ok=True)
    Path(outside, "file").write_text("precious\n")
    Path(outside, "dir", "inner").write_text("precious\n")
    for entry in os.scandir(top):  # start from an empty folder
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    script = (
        'cd "$1" && mkdir -p old/deep keep empty && echo 1 > old/deep/a && '
        "echo 2 > keep/read-lately && echo 3 > modified-lately && echo 4 > plain && "
        'ln -s "$2/file" link-to-file && ln -s "$2/dir" link-to-dir'
    )
    made = as_user(owner, script, top, outside)
    assert made.returncode == 0, made.stderr
    future = time.time() + 40 * 86400  # max_age_days 30: everything made now is old then
    os.utime(
        f"{top}/keep/read-lately", (future - 86400, os.stat(f"{top}/keep/read-lately").st_mtime)
    )
    os.utime(f"{top}/modified-lately", (os.stat(f"{top}/plain").st_atime, future - 86400))

    dry = scratch.clean(cfg, dry_run=True, now=future)
    gone = {os.path.relpath(r["path"], top) for r in dry.removed}
    assert gone == {"old/deep/a", "plain", "link-to-file", "link-to-dir"}
    assert {os.path.relpath(d, top) for d in dry.removed_dirs} == {"old/deep", "old", "empty"}
    assert os.path.exists(f"{top}/plain") and os.path.isdir(f"{top}/old/deep")

    real = scratch.clean(cfg, now=future)
    assert real.as_dict() | {"dry_run": True} == dry.as_dict()
    assert sorted(os.listdir(top)) == ["keep", "modified-lately"]
    assert os.listdir(f"{top}/keep") == ["read-lately"]
    assert Path(outside, "file").read_text() == Path(outside, "dir", "inner").read_text()
    assert os.path.isdir(top)  # the user's folder stays
    assert real.errors == []


def test_scratch_clean_counts_ctime(world):
    cfg, owner = world.cfg, world.kinds["owner"]
    f = os.path.join(cfg["paths"]["scratch"], owner, "old-times")
    assert as_user(owner, 'echo x > "$1"', f).returncode == 0
    year_ago = time.time() - 365 * 86400
    os.utime(f, (year_ago, year_ago))  # mtime and atime old, ctime is now
    assert scratch.clean(cfg).removed == []
    assert os.path.exists(f)
    os.unlink(f)


def test_scratch_clean_stays_on_its_file_system(world):
    cfg, owner = world.cfg, world.kinds["owner"]
    mnt = os.path.join(cfg["paths"]["scratch"], owner, "mnt")
    os.mkdir(mnt)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stascratch", mnt],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        Path(mnt, "elsewhere").write_text("x")
        report = scratch.clean(cfg, now=time.time() + 40 * 86400)
        assert Path(mnt, "elsewhere").exists()
        assert any("another file system" in e for e in report.errors)
    finally:
        subprocess.run(["umount", mnt], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


def test_scratch_clean_cli(world, tmp_path, run_cli):
    site = tmp_path / "site.yml"
    site.write_text(yaml.safe_dump({k: world.cfg[k] for k in ("site", "users", "storage")}))
    f = os.path.join(world.cfg["paths"]["scratch"], world.kinds["owner"], "ancient")
    assert as_user(world.kinds["owner"], 'echo x > "$1"', f).returncode == 0
    code, out, err = run_cli("--config", site, "storage", "scratch-clean", "--dry-run")
    assert code == 0 and "ancient" not in out, err  # made just now: kept
    assert out.rstrip().endswith("entries kept")
    os.unlink(f)


def test_container_view_differs_only_by_read_only_mounts():
    host = {(a, k, o): v for a, k, o, v in areas.cells()}
    inside = {(a, k, o): v for a, k, o, v in areas.cells(in_container=True)}
    differ = {key for key in host if host[key] != inside[key]}
    assert differ == {("site data", "manager", "write"), ("software", "manager", "write")}
