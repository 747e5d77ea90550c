"""Choosing a software stack: the spawn form, the hub's refusal of other images, and the
stack a user picked being the one that runs."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def chooser(users):
    return users.logged_in("k")[2]


@pytest.fixture(scope="module")
def host_stacks(cfg, host) -> dict:
    """The stacks of the host's images.json: name -> {ref, tag, manifest, ...}."""
    text = host.file(f"{cfg['paths']['etc']}/images.json").content_string
    return json.loads(text)["scirepo_images"]["stacks"]


def test_an_image_outside_the_site_config_is_refused(chooser):
    res = chooser.api("POST", f"/users/{chooser.name}/server",
                      json={"image": "debian:bookworm"})  # fmt: skip
    assert res.status_code == 400
    assert "not in allowed list" in res.json()["message"]
    assert not chooser.api("GET", f"/users/{chooser.name}").json()["servers"]
    # The refused choice is not remembered: a start without options gets the default image.
    chooser.start_server()
    chooser.stop_server()


def test_spawn_form_shows_every_stack_with_description_and_versions(chooser, cfg, host_stacks):
    stacks = cfg["hub"]["images"]
    if len(stacks) < 2:
        pytest.skip("the site config offers one image: the hub shows no form")
    page = chooser.session.get(f"{chooser.url}/hub/spawn", verify=chooser.cafile, timeout=30)
    assert page.status_code == 200
    for name in stacks:
        card = re.search(rf'data-stack="{re.escape(name)}".*?</label>', page.text, re.S)
        assert card, f"no card for {name}"
        assert cfg["images"]["stacks"][name]["description"].split()[0] in card.group(0)
        assert name in host_stacks
    default = re.search(r'value="([^"]+)" checked', page.text)
    assert default and default.group(1) == cfg["hub"]["default_image"]


def test_two_stacks_run_side_by_side_as_named_servers(chooser, cfg, host, host_stacks):
    if not cfg["hub"]["named_servers"]:
        pytest.skip("hub.named_servers is off in this site config")
    other = cfg["hub"]["images"][-1]
    chooser.start_server()
    try:
        chooser.start_server(image=other, server_name="second")
        containers = host.check_output("docker ps --format '{{.Names}} {{.Image}}'")
        assert f"jupyter-{chooser.name} " in containers + " "
        assert f"jupyter-{chooser.name}--second " in containers + " "
        want = host_stacks[other]["ref"]
        got = host.check_output(f"docker inspect -f '{{{{.Config.Image}}}}' "
                                f"jupyter-{chooser.name}--second")  # fmt: skip
        assert got == want
        manifest = host_stacks[other]["manifest"]
        if manifest.get("headline"):
            pkg = manifest["headline"]
            version = manifest["packages"][pkg]
            res = chooser.run_code(
                f"import importlib.metadata as m; print(m.version({pkg!r}))", server_name="second"
            )
            assert res["stdout"].strip() == version, res
    finally:
        chooser.stop_server(server_name="second")
        chooser.stop_server()


def test_every_stack_is_tagged_with_its_headline_version(cfg, host_stacks):
    for name in cfg["hub"]["images"]:
        entry = host_stacks[name]
        manifest = entry["manifest"]
        headline = manifest["headline"]
        version = manifest["packages"][headline]
        assert entry["tag"].endswith(f"-{headline}-{version}"), entry["tag"]
        assert entry["ref"].split("@")[1].startswith("sha256:")
