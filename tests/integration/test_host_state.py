"""State of a deployed host that the Ansible roles base, sshd, storage and authd set up.

Run with plain pytest after a deploy, against the host the playbook just deployed:
$SCIREPO_TEST_HOST (a testinfra host spec, e.g. `docker://scirepo-host` or
`ssh://user@host:22?ssh_identity_file=...`; the conftest is not needed then, see
`--noconftest`), else the `host` fixture of tests/integration/conftest.py (the local host of
`make up`, deployed from this tree). Expected values come from the host's own resolved
config (/etc/scirepo/site.json), so the tests hold for any site.
Some tests create a throwaway platform user `srt<random>` and remove it again.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex

import pytest

testinfra = pytest.importorskip("testinfra")

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def target(request):
    """The testinfra host under test, with root rights."""
    spec = os.environ.get("SCIREPO_TEST_HOST")
    if not spec:
        # The session fixture of tests/integration/conftest.py: the local host of `make up`,
        # brought up (or redeployed) from this tree first.
        return request.getfixturevalue("host")
    # Root already inside a container; over SSH the deploy account uses sudo.
    sudo = not spec.startswith(("docker://", "local://"))
    return testinfra.get_host(spec, sudo=sudo)


@pytest.fixture(scope="module")
def site(target) -> dict:
    """The resolved config the host was deployed with."""
    return json.loads(target.file("/etc/scirepo/site.json").content_string)["scirepo"]


@pytest.fixture(scope="module")
def platform_user(target, site):
    """A throwaway member of users.group with a password: (name, password)."""
    name = "srt" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    group = site["users"]["group"]
    target.run_expect([0], f"useradd -M -s /bin/bash -G {shlex.quote(group)} {name}")
    try:
        target.run_expect([0], f"printf '%s:%s\\n' {name} {shlex.quote(password)} | chpasswd")
        yield name, password
    finally:
        target.run(f"userdel {name}")


def authd_check(target, username: str, password: str | None) -> tuple[int, dict]:
    if password is None:
        res = target.run(f"scirepo authd check --lookup {shlex.quote(username)}")
    else:
        res = target.run(
            f"printf '%s\\n' {shlex.quote(password)} | scirepo authd check {shlex.quote(username)}"
        )
    return res.rc, json.loads(res.stdout)


# --------------------------------------------------------------------------- base


@pytest.mark.parametrize(
    "package",
    ["python3-venv", "python3-yaml", "python3-jsonschema", "acl", "openssl", "ca-certificates"],
)
def test_package_is_installed(target, package):
    assert target.package(package).is_installed


@pytest.mark.parametrize(
    ("key", "mode"),
    [("etc", 0o755), ("secrets", 0o700), ("state", 0o755)],
)
def test_platform_directory(target, site, key, mode):
    d = target.file(site["paths"][key])
    assert d.is_directory
    assert (d.user, d.group, d.mode) == ("root", "root", mode)


def test_site_json_is_world_readable(target, site):
    f = target.file(site["paths"]["etc"] + "/site.json")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)


def test_every_secret_is_0600(target, site):
    listing = target.check_output(
        f"find {site['paths']['secrets']} -mindepth 1 -printf '%y %m %p\\n'"
    )
    for line in filter(None, listing.splitlines()):
        kind, mode, path = line.split(" ", 2)
        assert kind == "f", f"{path}: only files belong in the secrets directory"
        assert mode == "600", f"{path} has mode {mode}"


@pytest.mark.parametrize("group", ["users.group", "storage.data_managers_group"])
def test_platform_group_exists(target, site, group):
    section, key = group.split(".")
    assert target.group(site[section][key]).exists


def test_scirepo_command_runs_from_the_venv(target, site):
    link = target.file("/usr/local/bin/scirepo")
    assert link.is_symlink
    assert link.linked_to == site["paths"]["venv"] + "/bin/scirepo"
    assert target.run("scirepo --help").rc == 0


def test_venv_sees_debian_packages(target, site):
    python = site["paths"]["venv"] + "/bin/python"
    target.run_expect([0], f"{python} -c 'import yaml, jsonschema, scirepo.authd'")


# --------------------------------------------------------------------------- sshd


@pytest.mark.parametrize("service", ["ssh", "scirepo-authd"])
def test_service_is_enabled_and_running(target, service):
    svc = target.service(service)
    assert svc.is_enabled
    assert svc.is_running


@pytest.fixture(scope="module")
def sshd_config(target) -> dict[str, list[str]]:
    """`sshd -T` (effective global settings) as keyword -> values."""
    out: dict[str, list[str]] = {}
    for line in target.check_output("/usr/sbin/sshd -T").splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("permitrootlogin", "no"),
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitemptypasswords", "no"),
        ("usepam", "yes"),
        ("x11forwarding", "no"),
        ("maxauthtries", "4"),
        ("logingracetime", "30"),
    ],
)
def test_sshd_setting(sshd_config, key, value):
    assert sshd_config[key] == [value]


def test_sshd_port(sshd_config, site):
    assert sshd_config["port"] == [str(site["ssh"]["port"])]


def test_sshd_allows_platform_users_and_the_deploy_account(target, sshd_config, site):
    deploy_group = target.user(site["ssh"]["deploy_user"]).group
    assert set(sshd_config["allowgroups"]) == {site["users"]["group"], deploy_group}


def test_platform_users_may_use_their_password(target, site, platform_user):
    name, _ = platform_user
    out = target.check_output(f"/usr/sbin/sshd -T -C user={name},host=client,addr=192.0.2.1")
    expected = "yes" if site["ssh"]["password_authentication"] else "no"
    assert f"passwordauthentication {expected}" in out.splitlines()


def test_deploy_account_needs_a_key(target, site):
    user = site["ssh"]["deploy_user"]
    out = target.check_output(f"/usr/sbin/sshd -T -C user={user},host=client,addr=192.0.2.1")
    assert "passwordauthentication no" in out.splitlines()


def test_host_keys_exist(target):
    key = target.file("/etc/ssh/ssh_host_ed25519_key")
    assert key.exists and key.mode == 0o600


# --------------------------------------------------------------------------- storage


def _layout(site: dict) -> dict[str, tuple[str, str, int]]:
    users, managers = site["users"]["group"], site["storage"]["data_managers_group"]
    p = site["paths"]
    layout = {
        p["root"]: ("root", "root", 0o755),
        p["data"]: ("root", "root", 0o755),
        p["software"]: ("root", managers, 0o2775),
        p["workspaces"]: ("root", "root", 0o711),
        p["upload"]: ("root", users, 0o1770),
    }
    layout.update({path: ("root", managers, 0o2775) for path in p["sites"].values()})
    return layout


@pytest.mark.parametrize("area", ["root", "data", "software", "workspaces", "upload", "sites"])
def test_storage_area_owner_and_mode(target, site, area):
    paths = site["paths"][area]
    layout = _layout(site)
    for path in paths.values() if isinstance(paths, dict) else [paths]:
        d = target.file(path)
        assert d.is_directory, path
        assert (d.user, d.group, d.mode) == layout[path], path


# --------------------------------------------------------------------------- authd


def test_pam_service_uses_the_common_stacks(target):
    f = target.file("/etc/pam.d/scirepo")
    assert (f.user, f.mode) == ("root", 0o644)
    assert f.contains("^@include common-auth")
    assert f.contains("^@include common-account")


def test_authd_socket_is_root_only(target, site):
    run_dir = target.file(site["paths"]["run"])
    assert (run_dir.user, run_dir.group, run_dir.mode) == ("root", "root", 0o750)
    sock = target.file(site["paths"]["authd_socket"])
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode) == ("root", "root", 0o660)


def test_authd_accepts_a_platform_user(target, platform_user):
    name, password = platform_user
    rc, answer = authd_check(target, name, password)
    assert rc == 0
    assert answer["ok"] is True and answer["password_expired"] is False
    assert answer["user"]["name"] == name
    assert answer["user"]["uid"] == target.user(name).uid


def test_authd_refuses_a_wrong_password(target, platform_user):
    name, password = platform_user
    rc, answer = authd_check(target, name, password + "-wrong")
    assert rc == 1
    assert answer == {"ok": False, "error": "invalid username or password"}


def test_authd_refuses_root(target, site):
    rc, answer = authd_check(target, "root", None)
    assert rc == 1
    assert answer == {"ok": False, "error": f"not a member of {site['users']['group']}"}


def test_authd_restart_keeps_the_run_directory(target, site, platform_user):
    # The hub container bind-mounts the directory: a new one would cut it off.
    before = target.check_output(f"stat -c %i {site['paths']['run']}")
    target.run_expect([0], "systemctl restart scirepo-authd")
    target.run_expect([0], f"timeout 30 sh -c 'until [ -S {site['paths']['authd_socket']} ]; "
                         "do sleep 0.2; done'")  # fmt: skip
    assert target.check_output(f"stat -c %i {site['paths']['run']}") == before
    rc, answer = authd_check(target, platform_user[0], None)
    assert rc == 0 and answer["ok"] is True
