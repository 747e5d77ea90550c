"""Rollout of a new version of a stack, and pruning of the images the host no longer needs.

Publishing a new version of a stack (a new digest under the same stack name) and deploying
it makes it the choice for new servers; a server of the old version keeps running it and
keeps answering. The images role prunes: the old image stays while a server uses it and goes
with the first deploy after that server stopped.

The new version is the stack rebuilt from this tree with a revision note in its labels
(`images.build_image(revision=...)`): every layer comes from the build cache and only the
image config differs, so it is a new digest within seconds. It is pushed to the local
registry and deployed with an images.json of its own (`scirepo deploy -- -e @FILE` overrides
build/images.json, which stays untouched). The last test deploys the host's own images.json
again (the finalizer does it too if a test failed before), so the host ends as it was.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess

import pytest

from scirepo import images

from .conftest import changed_tasks, deploy_local, on_host

pytestmark = pytest.mark.host

# The smallest child stack: its rebuild is all cache hits and its pull shares every layer.
STACK = "astronomy"
PRUNE_TASK = "Images that no images.json names and no container uses are removed"


def host_images(cfg: dict) -> dict:
    """The `scirepo_images` part of the host's images.json."""
    text = on_host(cfg, "cat", f"{cfg['paths']['etc']}/images.json").stdout
    return json.loads(text)["scirepo_images"]


def deploy(site_path, doc: dict, tmp_path) -> subprocess.CompletedProcess:
    """`scirepo deploy` of this tree with `doc` as the images.json."""
    path = tmp_path / "images.json"
    path.write_text(json.dumps({"scirepo_images": doc}, indent=2))
    return deploy_local(site_path, "-e", f"@{path}")


def publish(cfg: dict, current: dict) -> dict:
    """Build and push a new version of STACK; return its images.json entry."""
    sha, date, dirty = images.git_revision()
    push_registry = current["stacks"][STACK]["push_ref"].split("/", 1)[0]
    built = images.build_image(
        cfg,
        STACK,
        push_registry,
        base_ref=current["stacks"][images.PARENT_STACK]["push_ref"],
        revision=(f"{sha}.rollout", date, dirty),
    )
    return images.images_document(None, {STACK: built})["scirepo_images"]["stacks"][STACK]


def container_image(cfg: dict, container: str) -> str:
    return on_host(cfg, "docker", "inspect", "-f", "{{.Config.Image}}", container).stdout.strip()


def image_present(cfg: dict, ref: str) -> bool:
    return on_host(cfg, "docker", "image", "inspect", ref).returncode == 0


def containers_using(cfg: dict, ref: str) -> list[str]:
    """Names of the containers (running or stopped) created from the image `ref`."""
    image_id = on_host(cfg, "docker", "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
    out = on_host(
        cfg, "sh", "-c", "docker ps -aq | xargs -r docker inspect -f '{{.Image}} {{.Name}}'"
    )
    return [line.split()[1].lstrip("/") for line in out.stdout.splitlines()
            if image_id and line.split()[0] == image_id]  # fmt: skip


def hub_allowed_images(cfg: dict) -> dict:
    """DockerSpawner.allowed_images as the hub's config computes it in the hub container."""
    code = (
        "import json; from traitlets.config import Config; from scirepo.hub import config; "
        "c = Config(); config.apply(c); print(json.dumps(c.DockerSpawner.allowed_images))"
    )
    res = on_host(cfg, "docker", "exec", "scirepo-hub", "python3", "-c", code)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_deployed(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


@pytest.fixture(scope="module")
def rollout(cfg, site_path, users, tmp_path_factory):
    """A server of STACK runs; then a new version of STACK is published and deployed.

    Yields {"before", "after": images docs, "old", "new": refs, "old_user", "tmp"}; a test
    that starts a server records its client in "servers" so that the finalizer stops it.
    """
    if STACK not in cfg["hub"]["images"]:
        pytest.skip(f"the site config does not offer {STACK}")
    tmp = tmp_path_factory.mktemp("rollout")
    before = host_images(cfg)
    _, _, old_user = users.logged_in("ro")
    state = {"before": before, "old": before["stacks"][STACK]["ref"], "old_user": old_user,
             "tmp": tmp, "servers": [(old_user, "")]}  # fmt: skip
    try:
        old_user.start_server(image=STACK)
        after = copy.deepcopy(before)
        after["stacks"][STACK] = publish(cfg, before)
        state.update(after=after, new=after["stacks"][STACK]["ref"])
        assert state["new"] != state["old"]
        assert_deployed(deploy(site_path, after, tmp))
        yield state
    finally:
        for hub, server_name in state["servers"]:
            try:
                hub.stop_server(server_name=server_name)
            except Exception as exc:  # best effort: the deploy below is what matters
                print(f"stopping {hub.name}/{server_name}: {exc}")
        if host_images(cfg) != before:
            res = deploy(site_path, before, tmp)
            assert res.returncode == 0, (
                "restoring the host's images.json failed:\n" + (res.stdout[-3000:])
            )


def test_a_running_server_keeps_the_old_version_and_answers(rollout, cfg):
    user = rollout["old_user"]
    assert host_images(cfg)["stacks"][STACK]["ref"] == rollout["new"]
    assert container_image(cfg, f"jupyter-{user.name}") == rollout["old"]
    res = user.run_code("print(6 * 7)")
    assert (res["status"], res["stdout"].strip()) == ("ok", "42"), res
    # The deploy pruned after the hub restarted with the new images.json: a used image stays.
    assert image_present(cfg, rollout["old"])


def test_new_servers_get_the_new_version(rollout, cfg, users):
    allowed = hub_allowed_images(cfg)
    assert allowed[STACK] == rollout["new"]
    assert rollout["old"] not in allowed.values()

    user = rollout["old_user"]
    _, _, other = users.logged_in("rn")
    if len(cfg["hub"]["images"]) > 1:
        # The spawn form of the running hub names the new version's tag.
        page = other.session.get(f"{other.url}/hub/spawn", verify=other.cafile, timeout=30)
        card = re.search(rf'data-stack="{STACK}".*?</label>', page.text, re.S)
        assert card, page.text[-2000:]
        assert rollout["after"]["stacks"][STACK]["manifest"]["tag"] in card.group(0)

    # Another user's server, and a second (named) server of the user whose old one runs.
    rollout["servers"].append((other, ""))
    other.start_server(image=STACK)
    assert container_image(cfg, f"jupyter-{other.name}") == rollout["new"]
    manifest = rollout["after"]["stacks"][STACK]["manifest"]
    version = manifest["packages"][manifest["headline"]]
    res = other.run_code(
        f"import importlib.metadata as m; print(m.version({manifest['headline']!r}))"
    )
    assert res["stdout"].strip() == version, res
    if cfg["hub"]["named_servers"]:
        rollout["servers"].insert(0, (user, "new"))
        user.start_server(image=STACK, server_name="new")
        assert container_image(cfg, f"jupyter-{user.name}--new") == rollout["new"]
        assert container_image(cfg, f"jupyter-{user.name}") == rollout["old"]
        user.stop_server(server_name="new")


def test_the_old_version_is_pruned_by_the_deploy_after_its_last_server_stopped(
    rollout, cfg, site_path
):
    user = rollout["old_user"]
    assert containers_using(cfg, rollout["old"]) == [f"jupyter-{user.name}"]
    user.stop_server()
    assert image_present(cfg, rollout["old"])  # stopping a server removes no image

    res = deploy(site_path, rollout["after"], rollout["tmp"])
    assert_deployed(res)
    assert any(t.startswith(PRUNE_TASK) for t in changed_tasks(res.stdout)), res.stdout[-3000:]
    assert not image_present(cfg, rollout["old"])
    assert image_present(cfg, rollout["new"])  # named in images.json, and in use


def test_deploying_the_previous_images_json_rolls_back_and_prunes_the_new_version(
    rollout, cfg, site_path
):
    for hub, server_name in rollout["servers"]:
        hub.stop_server(server_name=server_name)
    res = deploy(site_path, rollout["before"], rollout["tmp"])
    assert_deployed(res)
    assert host_images(cfg) == rollout["before"]
    assert hub_allowed_images(cfg)[STACK] == rollout["old"]
    assert image_present(cfg, rollout["old"])  # pulled again by digest
    # Pruned when the hub restarted with the restored images.json.
    assert not image_present(cfg, rollout["new"])
    # Nothing left for the next deploy to prune: it reports no change for images.
    prefix = f"{cfg['images']['registry']}/{cfg['images']['namespace']}/"
    dry = on_host(cfg, "scirepo-prune-images", "--repository-prefix", prefix,
                  "--images-json", f"{cfg['paths']['etc']}/images.json", "--dry-run")  # fmt: skip
    assert dry.returncode == 0 and "would remove" not in dry.stdout, dry.stdout + dry.stderr
