"""Tests of platform user management: pure helpers, then real accounts made with useradd.

The real tests need root (they are meant for throwaway machines). They use uids
64000-64099, names `srt<random>`, and home_root and storage.root under tmp_path; a
finalizer deletes every account and group they made, even when a test fails.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import stat
import subprocess
import warnings

import pytest
import yaml

from scirepo import config, users
from scirepo.users import UserError

UID_MIN, UID_MAX = 64000, 64099


def site_cfg(tmp_path, **users_extra) -> dict:
    data = {
        "site": {"name": "test"},
        "users": {
            "group": f"srt{secrets.token_hex(3)}-users",
            "uid_min": UID_MIN,
            "uid_max": UID_MAX,
            "home_root": str(tmp_path / "home"),
            **users_extra,
        },
        "storage": {"root": str(tmp_path / "srv")},
    }
    return config.resolve(config.validate(data))


# --------------------------------------------------------------------------- pure


def test_allocate_uid_takes_lowest_free():
    assert users.allocate_uid(set(), set(), 100, 200) == 100
    assert users.allocate_uid({100, 101, 103}, set(), 100, 200) == 102


def test_allocate_uid_skips_ids_used_as_gid():
    # 102 is free as a uid but a group has it: the user's own group needs gid == uid.
    assert users.allocate_uid({100, 101}, {102, 104}, 100, 200) == 103


def test_allocate_uid_ignores_ids_outside_range():
    assert users.allocate_uid({5, 300}, {6}, 100, 102) == 100


def test_allocate_uid_exhausted_names_the_range():
    with pytest.raises(UserError, match=r"users.uid_min..users.uid_max \(100-102\)"):
        users.allocate_uid({100, 102}, {101}, 100, 102)


@pytest.mark.parametrize("name", ["alice", "a", "_svc", "jo-ann", "u_2", "a" * 32])
def test_validate_username_accepts(tmp_path, name):
    users.validate_username(site_cfg(tmp_path), name)


@pytest.mark.parametrize(
    "name", ["", "Alice", "1abc", "-x", "a.b", "a b", "ällo", "a" * 33, "x\n", "a:b"]
)
def test_validate_username_rejects_invalid(tmp_path, name):
    with pytest.raises(UserError, match="invalid username"):
        users.validate_username(site_cfg(tmp_path), name)


@pytest.mark.parametrize(
    "name", ["root", "admin", "www-data", "systemd-network", "jovyan", "scirepo", "scirepo-x"]
)
def test_validate_username_rejects_reserved(tmp_path, name):
    with pytest.raises(UserError, match="reserved name"):
        users.validate_username(site_cfg(tmp_path), name)


def test_validate_username_rejects_configured_names(tmp_path):
    cfg = site_cfg(tmp_path, reserved_names=["boss"])
    with pytest.raises(UserError, match=r"reserved name \(users.reserved_names\)"):
        users.validate_username(cfg, "boss")
    with pytest.raises(UserError, match="platform group"):
        users.validate_username(cfg, cfg["users"]["group"])


def test_validate_username_rejects_existing_system_accounts_and_groups(tmp_path):
    cfg = site_cfg(tmp_path)
    reserved = [n for n in (g.gr_name for g in grp.getgrall()) if config.reserved_reason(n)]
    account = next(
        p.pw_name
        for p in pwd.getpwall()
        if not config.reserved_reason(p.pw_name) and users.USERNAME_RE.match(p.pw_name)
    )
    group = next(
        g.gr_name
        for g in grp.getgrall()
        if g.gr_name not in reserved
        and users.USERNAME_RE.match(g.gr_name)
        and not UID_MIN <= g.gr_gid <= UID_MAX
    )
    with pytest.raises(UserError, match="existing system"):
        users.validate_username(cfg, account)
    with pytest.raises(UserError, match="existing system"):
        users.validate_username(cfg, group)


def test_gecos_fields_are_cleaned():
    assert users.clean_gecos_field(" Doe, Jane:\nPhD ", "name") == "Doe Jane PhD"
    assert users.clean_gecos_field("Zoë Ångström", "name") == "Zoë Ångström"
    with pytest.raises(UserError, match="control character"):
        users.clean_gecos_field("bell\a", "full name")
    with pytest.raises(UserError, match="control character"):
        users.clean_gecos_field("tab\there", "full name")


def test_generated_password_is_long_and_unambiguous():
    seen = set()
    for _ in range(50):
        password = users.generate_password()
        letters = password.replace("-", "")
        assert len(letters) >= 16
        assert set(letters) <= set(users.PASSWORD_ALPHABET)
        assert not set(letters) & set("0O1lI")
        seen.add(password)
    assert len(seen) == 50


# --------------------------------------------------------------------------- real accounts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd)")


def shadow_entry(name: str) -> list[str]:
    with open("/etc/shadow") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == name:
                return fields
    raise KeyError(name)


def password_matches(name: str, password: str) -> bool:
    stored = shadow_entry(name)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt leaves in 3.13
        import crypt
    return crypt.crypt(password, stored) == stored


def snapshot(cfg: dict, name: str) -> dict:
    """Everything ensure_user controls, to compare before and after a second call."""
    pw = pwd.getpwnam(name)
    home = pw.pw_dir
    workspace = os.path.join(cfg["paths"]["workspaces"], name)

    def st(path):
        s = os.lstat(path)
        return (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode), s.st_ino, s.st_mtime_ns)

    return {
        "pwd": tuple(pw),
        "own group": tuple(grp.getgrnam(name)),
        "users group": tuple(grp.getgrnam(cfg["users"]["group"])),
        "shadow": shadow_entry(name),
        "home": st(home),
        "workspace": st(workspace),
        "workspaces": st(cfg["paths"]["workspaces"]),
        "link": (os.readlink(os.path.join(home, "workspace")), st(os.path.join(home, "workspace"))),
    }


@pytest.fixture
def accounts(tmp_path):
    """A config for tests and a name factory; deletes every account and group afterwards."""
    cfg = site_cfg(tmp_path)
    names: list[str] = []

    def new_name() -> str:
        name = f"srt{secrets.token_hex(4)}"
        names.append(name)
        return name

    yield cfg, new_name, names
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
    subprocess.run(["groupdel", cfg["users"]["group"]], capture_output=True, check=False)


@needs_root
def test_ensure_user_creates_a_complete_account(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    created, password = users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    assert created and len(password) >= 16

    pw = pwd.getpwnam(name)
    assert UID_MIN <= pw.pw_uid <= UID_MAX
    assert pw.pw_gid == pw.pw_uid
    assert grp.getgrnam(name).gr_gid == pw.pw_uid
    assert name in grp.getgrnam(cfg["users"]["group"]).gr_mem
    assert pw.pw_gecos == "Jane Doe,,,,jane@example.org"
    assert pw.pw_shell == "/bin/bash"
    home = os.path.join(cfg["users"]["home_root"], name)
    assert pw.pw_dir == home

    def owner_mode(path):
        s = os.lstat(path)
        return s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode), stat.S_ISDIR(s.st_mode)

    workspaces = cfg["paths"]["workspaces"]
    workspace = os.path.join(workspaces, name)
    assert owner_mode(home) == (pw.pw_uid, pw.pw_uid, 0o700, True)
    assert owner_mode(workspaces) == (0, 0, 0o711, True)
    assert owner_mode(workspace) == (pw.pw_uid, pw.pw_uid, 0o700, True)
    link = os.path.join(home, "workspace")
    assert os.path.islink(link) and os.readlink(link) == workspace
    assert os.lstat(link).st_uid == pw.pw_uid
    assert password_matches(name, password)
    assert shadow_entry(name)[2] != "0"  # not expired unless asked


@needs_root
def test_second_call_changes_nothing(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    _, password = users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    before = snapshot(cfg, name)
    assert users.ensure_user(cfg, name, "Other Name", "other@example.org") == (False, None)
    assert snapshot(cfg, name) == before
    assert password_matches(name, password)


@needs_root
def test_second_call_repairs_what_is_wrong(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    _, password = users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    hash_before = shadow_entry(name)[1]
    home = pwd.getpwnam(name).pw_dir
    workspace = os.path.join(cfg["paths"]["workspaces"], name)
    link = os.path.join(home, "workspace")
    subprocess.run(["gpasswd", "-d", name, cfg["users"]["group"]], check=True, capture_output=True)
    os.chmod(home, 0o755)  # noqa: S103 - the wrong mode to repair
    os.chmod(workspace, 0o777)  # noqa: S103 - the wrong mode to repair
    os.chown(workspace, 0, 0)
    os.unlink(link)
    os.symlink("/tmp/elsewhere", link)

    assert users.ensure_user(cfg, name, "Jane Doe", "jane@example.org") == (False, None)
    uid = pwd.getpwnam(name).pw_uid
    assert name in grp.getgrnam(cfg["users"]["group"]).gr_mem
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    s = os.stat(workspace)
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (uid, uid, 0o700)
    assert os.readlink(link) == workspace
    assert shadow_entry(name)[1] == hash_before
    assert password_matches(name, password)


@needs_root
def test_real_directory_in_place_of_the_link_is_an_error(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    link = os.path.join(pwd.getpwnam(name).pw_dir, "workspace")
    os.unlink(link)
    os.mkdir(link)
    (open(os.path.join(link, "notes.txt"), "w")).close()
    with pytest.raises(UserError, match="is not a symlink"):
        users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    assert os.path.isfile(os.path.join(link, "notes.txt"))


@needs_root
def test_expire_password_forces_a_change(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    users.ensure_user(cfg, name, "Jane Doe", "jane@example.org", expire_password=True)
    assert shadow_entry(name)[2] == "0"


@needs_root
def test_bad_input_creates_nothing(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    with pytest.raises(UserError, match="full name contains a control character"):
        users.ensure_user(cfg, name, "Jane\x1bDoe", "jane@example.org")
    with pytest.raises(UserError, match="invalid email"):
        users.ensure_user(cfg, name, "Jane Doe", "not-an-address")
    with pytest.raises(UserError, match="not in users.admins"):
        users.ensure_user(cfg, name, "Jane Doe", "jane@example.org", admin=True)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


@needs_root
def test_gecos_separators_are_removed(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    users.ensure_user(cfg, name, "Doe, Jane: PhD", "jane@example.org")
    assert pwd.getpwnam(name).pw_gecos == "Doe Jane PhD,,,,jane@example.org"


@needs_root
def test_ids_skip_gids_in_use(accounts):
    cfg, new_name, _ = accounts
    blocker = new_name()
    users.ensure_group(blocker, gid=UID_MIN)
    assert users.ensure_group(blocker, gid=UID_MIN) is False
    with pytest.raises(UserError, match="expected"):
        users.ensure_group(blocker, gid=UID_MIN + 1)
    first, second = new_name(), new_name()
    users.ensure_user(cfg, first, "First", "first@example.org")
    users.ensure_user(cfg, second, "Second", "second@example.org")
    assert pwd.getpwnam(first).pw_uid == UID_MIN + 1
    assert pwd.getpwnam(second).pw_uid == UID_MIN + 2


@needs_root
def test_remove_user_keeps_data_and_its_uid(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    uid = pwd.getpwnam(name).pw_uid
    home = pwd.getpwnam(name).pw_dir
    workspace = os.path.join(cfg["paths"]["workspaces"], name)
    with open(os.path.join(workspace, "result.csv"), "w") as f:
        f.write("1,2\n")
    os.chown(os.path.join(workspace, "result.csv"), uid, uid)

    assert users.remove_user(cfg, name) is True
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    assert os.path.isdir(home) and os.path.isdir(workspace)
    assert users.remove_user(cfg, name) is False

    # A stranger does not get the uid that still owns the kept data...
    other = new_name()
    users.ensure_user(cfg, other, "Other", "other@example.org")
    assert pwd.getpwnam(other).pw_uid != uid
    # ...and the same name added again gets its data back.
    created, _ = users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    new_uid = pwd.getpwnam(name).pw_uid
    assert created and new_uid != uid
    assert os.stat(os.path.join(workspace, "result.csv")).st_uid == new_uid
    assert os.stat(workspace).st_uid == new_uid and os.stat(home).st_uid == new_uid


@needs_root
def test_remove_user_can_delete_data(accounts):
    cfg, new_name, _ = accounts
    name = new_name()
    users.ensure_user(cfg, name, "Jane Doe", "jane@example.org")
    home = pwd.getpwnam(name).pw_dir
    assert users.remove_user(cfg, name, keep_data=False) is True
    assert not os.path.exists(home)
    assert not os.path.exists(os.path.join(cfg["paths"]["workspaces"], name))


@needs_root
def test_remove_user_refuses_system_accounts(accounts):
    cfg, _, _ = accounts
    with pytest.raises(UserError, match="not a platform user"):
        users.remove_user(cfg, "daemon")
    assert pwd.getpwnam("daemon")


@needs_root
def test_cli_user_add(accounts, tmp_path, run_cli):
    cfg, new_name, _ = accounts
    name = new_name()
    site = tmp_path / "site.yml"
    keep = {"users", "storage", "site"}
    site.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k in keep}))

    code, out, err = run_cli(
        "--config", site, "user", "add", name, "--name", "J D", "--email", "j@e.org"
    )
    assert code == 0, err
    uid = pwd.getpwnam(name).pw_uid
    lines = out.splitlines()
    assert lines[:2] == [f"user: {name}", f"uid: {uid}"]
    password = lines[2].removeprefix("temporary password: ")
    assert password_matches(name, password)

    code, out, err = run_cli(
        "user", "add", name, "--name", "J D", "--email", "j@e.org", "--config", site
    )
    assert (code, out) == (0, f"{name} (uid {uid}): already exists, unchanged\n"), err
    assert password_matches(name, password)

    code, _, err = run_cli(
        "--config", site, "user", "add", "root", "--name", "R", "--email", "r@e.org"
    )
    assert code == 2 and "reserved name" in err and "Traceback" not in err
    code, _, err = run_cli(
        "--config", site, "user", "add", name, "--name", "x", "--email", "x@e.org", "--admin"
    )
    assert code == 2 and "users.admins" in err


@needs_root
def test_concurrent_ensure_user_calls_get_distinct_uids(accounts):
    """Four accounts made at once (threads, as four `scirepo user add` would) all succeed
    with distinct uids: allocation and useradd run under one lock."""
    from concurrent.futures import ThreadPoolExecutor

    cfg, new_name, _ = accounts
    names = [new_name() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda n: users.ensure_user(cfg, n, "Par Allel", "p@x.org"), names))
    assert all(created for created, _ in made)
    assert len({pwd.getpwnam(n).pw_uid for n in names}) == 4
