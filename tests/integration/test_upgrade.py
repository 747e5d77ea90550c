"""Upgrade from the previous release: the newest release in RELEASES before this tree is deployed
onto a fresh local host, a user starts a server and works in it, then this tree (with this
tree's site config) is deployed over it, as an operator upgrades with `git pull; make up`.

The user's server must survive the upgrade untouched (the same container, never restarted,
a kernel still holding its variables), and the user's files, password and hub state stay.
The module removes the local host first and ends with this tree deployed and checked by
`scirepo health` (part of `local up`), so the tests after it run on an upgraded host.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest
import yaml

from tests import releases

from .conftest import REPO, changed_tasks, on_host, scirepo_cli, ssh_client, ssh_run

pytestmark = pytest.mark.host


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def previous_release() -> tuple[str, str]:
    """The newest release in RELEASES whose commit is an ancestor of HEAD and not HEAD."""
    head = git("rev-parse", "HEAD")
    for version, commit in reversed(releases.read()):
        known = subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, check=False
        )
        if known.returncode != 0:
            pytest.fail(f"release {version}: commit {commit} is not in this clone's history")
        ancestor = subprocess.run(
            ["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=REPO, check=False
        )
        if ancestor.returncode == 0 and commit != head:
            return version, commit
    pytest.fail("RELEASES names no release before HEAD")


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory, cfg):
    """A checkout of the previous release that shares this checkout's local state (CA,
    registry, credentials) and virtualenv, as `git checkout` in one clone would."""
    tag, commit = previous_release()
    tree = tmp_path_factory.mktemp("release") / tag
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        (tree / ".scirepo").symlink_to(REPO / ".scirepo")
        (tree / ".venv").symlink_to(REPO / ".venv")
        # The release's own example config, on this host's container and ports, with one
        # stack (every stack is pulled at the upgrade).
        site = yaml.safe_load((tree / "site.example.yml").read_text())
        site["local"] = {k: cfg["local"][k] for k in [*site["local"], "container"]}
        site["images"]["stacks"] = {"base": site["images"]["stacks"]["base"]}
        site["hub"]["images"], site["hub"]["default_image"] = ["base"], "base"
        (tree / "site.yml").write_text(yaml.safe_dump(site))
        yield tag, tree
    finally:
        git("worktree", "remove", "--force", str(tree))


def run_in(tree, *args: str) -> subprocess.CompletedProcess:
    """`scirepo ARGS` of the checkout `tree`."""
    return subprocess.run(
        [sys.executable, "-m", "scirepo", *args],
        cwd=tree, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip


def container(cfg, name: str) -> dict:
    out = on_host(cfg, "docker", "inspect", f"jupyter-{name}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def test_upgrade_from_the_previous_release_keeps_running_servers_and_data(
    cfg, site_path, users, old_tree, tmp_path
):
    tag, tree = old_tree
    # A fresh host; the registry (one on the network) keeps this tree's images, so the
    # upgrade below does not push them all again (about 5 minutes).
    clean = scirepo_cli("local", "clean", "--keep-images", "--site", str(site_path))
    assert clean.returncode == 0, clean.stderr
    old = run_in(tree, "local", "up", "--site", "site.yml")
    assert old.returncode == 0, f"{tag}: " + old.stdout[-3000:] + old.stderr[-3000:]
    accounts = ["systemctl", "is-active", "scirepo-accounts"]
    assert on_host(cfg, *accounts).stdout.strip() != "active", f"{tag} predates the accounts"

    # A user of the old release: a file in the workspace, a server with a live kernel.
    name, password, hub = users.logged_in("u")
    marker = secrets.token_hex(8)
    client = ssh_client(cfg, name, password)
    try:
        assert ssh_run(client, f"echo {marker} > ~/workspace/before.txt")[0] == 0
    finally:
        client.close()
    hub.start_server()
    kernel = hub.start_kernel()
    assert hub.run_code(f"state = '{marker}'", kernel=kernel)["status"] == "ok"
    before = container(cfg, name)

    # This tree's config, but the engine's settings as the release left them: the
    # release's servers are auto-removed containers, which an engine restart deletes
    # (Docker 20.10, moby/moby#46308); this tree's are not (checked at the end).
    site = yaml.safe_load(site_path.read_text())
    site.setdefault("metrics", {})["docker_engine"] = False
    upgrade_site = tmp_path / "site.yml"
    upgrade_site.write_text(yaml.safe_dump(site))
    new = scirepo_cli("local", "up", "--site", str(upgrade_site), timeout=1800)
    # (`local up` ends with `scirepo health`: its exit code says the upgraded host works.)
    assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-3000:]

    # The server was neither recreated nor restarted, and its kernel kept its state.
    after = container(cfg, name)
    assert after["Id"] == before["Id"]
    assert after["State"]["Running"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    out = hub.run_code("print(state, open('workspace/before.txt').read().strip())", kernel=kernel)
    assert out["stdout"].split() == [marker, marker], out
    # The old hub token, the old password over SSH and at the hub, the file by its owner.
    assert hub.api("GET", f"/users/{name}").status_code == 200
    assert users.hub(name).login(password)
    client = ssh_client(cfg, name, password)
    try:
        rc, out, _ = ssh_run(client, "f=~/workspace/before.txt; cat $f; stat -c %U $f")
    finally:
        client.close()
    assert (rc, out.split()) == (0, [marker, name])
    # The upgrade brought what the release lacked, to the release's users too: their next
    # server is this tree's, with the areas the release did not have.
    assert on_host(cfg, *accounts).stdout.strip() == "active"
    hub.stop_server()
    hub.start_server()
    assert container(cfg, name)["Id"] != before["Id"]
    out = hub.run_code("import os; print(os.path.isdir(os.path.expanduser('~/workspace/public')))")
    assert out["stdout"].strip() == "True", out

    # A config change that restarts the engine (its metrics on): this tree's server and
    # its kernel carry on (live-restore), the hub and proxy come back.
    kernel = hub.start_kernel()
    assert hub.run_code(f"state = '{marker}'", kernel=kernel)["status"] == "ok"
    before = container(cfg, name)
    again = scirepo_cli("local", "up", "--site", str(site_path), timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    restarts = [t for t in changed_tasks(again.stdout) if "Settings changes reach" in t]
    assert restarts, "the engine was not restarted"
    after = container(cfg, name)
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert hub.run_code("print(state)", kernel=kernel)["stdout"].strip() == marker
    hub.stop_server()
