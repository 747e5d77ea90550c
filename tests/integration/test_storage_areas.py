"""The storage areas on the deployed host: the permissions matrix of storage/README.md
(`scirepo.storage.areas.PERMISSIONS`) checked over SSH and from each user's own server,
group membership taking effect at the next login, the public and scratch links, and the
quota and scratch timers.

Kinds checked here: owner, other, member and manager (a platform user added to
storage.data_managers_group). The admin and outsider columns are covered by the unit
test on a real machine (tests/unit/test_storage_areas.py).
"""

from __future__ import annotations

import json
import secrets

import pytest

from scirepo.storage import areas

from .conftest import on_host, ssh_client, ssh_run

pytestmark = pytest.mark.host

KINDS = ("owner", "other", "member", "manager")

# One shell line per operation; "$1" is the area's directory.
SHELL = {
    "list": 'ls -- "$1" >/dev/null',
    "read": 'cat -- "$1/owners-file" >/dev/null',
    "write": 'echo x > "$1/new-$2"',
}
# The same from Python in a kernel: prints one "area op ok|refused" line per cell.
PYTHON = """
import os, secrets
for area, path in {paths!r}.items():
    for op in ("list", "read", "write"):
        try:
            if op == "list":
                os.listdir(path)
            elif op == "read":
                open(os.path.join(path, "owners-file")).read()
            else:
                with open(os.path.join(path, "new-k" + secrets.token_hex(4)), "w") as f:
                    f.write("x")
            print(area.replace(" ", "_"), op, "ok")
        except OSError:
            print(area.replace(" ", "_"), op, "refused")
"""


@pytest.fixture(scope="module")
def world(cfg, users):
    """One account per kind, a group of owner and member, the owner's file in each area.
    Group membership is set before anyone logs in or starts a server."""
    made = {kind: users.add(f"s{kind[:2]}") for kind in KINDS}
    names = {kind: name for kind, (name, _) in made.items()}
    group = f"sg{secrets.token_hex(3)}"
    res = on_host(cfg, "scirepo", "group", "create", group)
    assert res.returncode == 0, res.stderr
    res = on_host(cfg, "scirepo", "group", "add", group, names["owner"], names["member"])
    assert res.returncode == 0, res.stderr
    res = on_host(cfg, "usermod", "-aG", cfg["storage"]["data_managers_group"], names["manager"])
    assert res.returncode == 0, res.stderr
    root, owner = cfg["paths"]["root"], names["owner"]
    site = next(iter(cfg["paths"]["sites"]))
    paths = {
        area: f"{root}/" + template.replace("<owner>", owner).replace("<group>", group)
        .replace("<site>", site)
        for area, (template, _) in areas.PERMISSIONS.items()
    }  # fmt: skip
    # The upload sandbox is shared and sticky: a file an earlier run's owner left there
    # (a run that crashed, or a host restored from a backup) would refuse this owner.
    upload_files = f"rm -f '{paths['upload']}/owners-file' '{paths['upload']}'/new-*"
    on_host(cfg, "sh", "-c", upload_files)
    client = ssh_client(cfg, owner, made["owner"][1])
    for area, (_, row) in areas.PERMISSIONS.items():
        if row["owner"] is not None:
            rc, _, err = ssh_run(client, f"echo mine > '{paths[area]}/owners-file'")
            assert rc == 0, (area, err)
    client.close()
    for area in ("site data", "software"):
        on_host(cfg, "sh", "-c", f"echo data > '{paths[area]}/owners-file'")
    yield {"names": names, "passwords": {k: p for k, (_, p) in made.items()}, "paths": paths,
           "group": group}  # fmt: skip
    on_host(cfg, "scirepo", "group", "delete", group, "--delete-data")
    for area in ("site data", "software"):
        on_host(cfg, "rm", "-f", f"{paths[area]}/owners-file")
    on_host(cfg, "sh", "-c", upload_files)


def test_permissions_matrix_over_ssh(cfg, world):
    failures = []
    for kind in KINDS:
        client = ssh_client(cfg, world["names"][kind], world["passwords"][kind])
        try:
            for area, k, op, allowed in areas.cells():
                if k != kind:
                    continue
                command = (
                    f"sh -c '{SHELL[op]}' sh '{world['paths'][area]}' {kind}{secrets.token_hex(3)}"
                )
                rc, _, _ = ssh_run(client, command)
                if (rc == 0) is not allowed:
                    failures.append((area, kind, op, "allowed" if rc == 0 else "refused"))
        finally:
            client.close()
    assert failures == []


def test_permissions_matrix_from_the_users_servers(cfg, users, world):
    failures = []
    code = PYTHON.format(paths=world["paths"])
    for kind in KINDS:
        hub = users.hub(world["names"][kind])
        assert hub.login(world["passwords"][kind])
        hub.start_server()
        try:
            res = hub.run_code(code)
        finally:
            hub.stop_server()
        assert res["status"] == "ok", res
        lines = [line.split() for line in res["stdout"].splitlines()]
        seen = {(a.replace("_", " "), op): r == "ok" for a, op, r in lines}
        for area, k, op, allowed in areas.cells(in_container=True):
            if k == kind and seen[(area, op)] is not allowed:
                failures.append((area, kind, op, "allowed" if seen[(area, op)] else "refused"))
    assert failures == []


def test_public_and_scratch_links_in_the_workspace(cfg, world):
    owner = world["names"]["owner"]
    client = ssh_client(cfg, owner, world["passwords"]["owner"])
    try:
        rc, out, err = ssh_run(
            client, "readlink ~/workspace/public ~/workspace/scratch; stat -L -c %a ~/workspace"
        )
    finally:
        client.close()
    assert rc == 0, err
    assert out.split() == [f"{cfg['paths']['public']}/{owner}",
                           f"{cfg['paths']['scratch']}/{owner}", "700"]  # fmt: skip


def test_new_group_member_gets_access_at_the_next_login(cfg, world):
    other, password = world["names"]["other"], world["passwords"]["other"]
    group_dir = world["paths"]["group"]
    before = ssh_client(cfg, other, password)
    try:
        res = on_host(cfg, "scirepo", "group", "add", world["group"], other)
        assert res.returncode == 0 and "next server start or SSH login" in res.stdout
        rc, _, _ = ssh_run(before, f"ls '{group_dir}'")
        assert rc != 0  # the session that was open keeps its groups
        after = ssh_client(cfg, other, password)
        try:
            rc, _, err = ssh_run(after, f"echo x > '{group_dir}/from-other' && ls '{group_dir}'")
            assert rc == 0, err
        finally:
            after.close()
    finally:
        before.close()
        on_host(cfg, "scirepo", "group", "remove", world["group"], other)


def test_storage_timers_and_login_notice_are_installed(host):
    for timer in ("scirepo-quota.timer", "scirepo-scratch-clean.timer"):
        unit = host.service(timer)
        assert unit.is_enabled and unit.is_running, timer
    script = host.file("/etc/profile.d/scirepo-quota.sh")
    assert script.exists and script.mode == 0o644 and script.user == "root"
    notices = host.file("/var/lib/scirepo/quota")
    assert notices.is_directory and notices.mode == 0o711


def test_usage_scratch_clean_and_repair_run_on_the_host(cfg, world):
    res = on_host(cfg, "scirepo", "storage", "usage", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert world["names"]["owner"] in report["users"] and report["errors"] == []
    res = on_host(cfg, "scirepo", "storage", "scratch-clean", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["removed"] == []  # nothing is 30 days old on a test host
    res = on_host(cfg, "scirepo", "storage", "repair", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] == 0, res.stdout


FSSPEC = """
import fsspec, json
out = {{}}
with fsspec.open("workspace://fsspec-check.txt", "w") as f:
    f.write("{marker}")
with fsspec.open("workspace://fsspec-check.txt") as f:
    out["workspace"] = f.read().decode()
sites = fsspec.filesystem("sites").ls("", detail=False)
out["sites"] = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in sites)
with fsspec.open("public://{owner}/owners-file") as f:
    out["public"] = f.read().decode().strip()
with fsspec.open("group://{group}/fsspec-{marker}.txt", "w") as f:
    f.write("{marker}")
try:
    fsspec.open("public://{owner}/not-mine.txt", "w").open().write("x")
    out["others_public_write"] = "allowed"
except OSError:
    out["others_public_write"] = "refused"
print(json.dumps(out))
"""


def test_fsspec_urls_from_a_users_server(cfg, users, world):
    """scirepo-fs in a real server on the host: the member's own workspace, the site list,
    the owner's public folder (read-only to others) and the shared group area by URL."""
    marker = secrets.token_hex(6)
    member = world["names"]["member"]
    hub = users.hub(member)
    assert hub.login(world["passwords"]["member"])
    hub.start_server()
    try:
        code = FSSPEC.format(marker=marker, owner=world["names"]["owner"], group=world["group"])
        res = hub.run_code(code)
    finally:
        hub.stop_server()
    assert res["status"] == "ok", res
    out = json.loads(res["stdout"])
    assert out == {
        "workspace": marker,
        "sites": sorted(cfg["paths"]["sites"]),
        "public": "mine",
        "others_public_write": "refused",
    }
    # The same files on the host, owned by the member who wrote them.
    workspace = f"{cfg['paths']['workspaces']}/{member}/fsspec-check.txt"
    group_file = f"{world['paths']['group']}/fsspec-{marker}.txt"
    res = on_host(cfg, "stat", "-c", "%U:%G", workspace, group_file)
    assert res.stdout.split() == [f"{member}:{member}", f"{member}:{world['group']}"]
