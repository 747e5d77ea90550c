"""Choosing a software stack: the spawn form, the hub's refusal of other images, and the
stack a user picked being the one that runs."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def chooser(users):
    name, password = users.add("k")
    hub = users.hub(name)
    assert hub.login(password)
    return hub


def test_an_image_outside_the_site_config_is_refused(chooser):
    res = chooser.api("POST", f"/users/{chooser.name}/server",
                      json={"image": "debian:bookworm"})  # fmt: skip
    assert res.status_code == 400
    assert "not in allowed list" in res.json()["message"]
    assert not chooser.api("GET", f"/users/{chooser.name}").json()["servers"]


def test_spawn_form_shows_every_stack_with_description_and_versions(chooser, cfg, host):
    stacks = cfg["hub"]["images"]
    if len(stacks) < 2:
        pytest.skip("the site config offers one image: the hub shows no form")
    page = chooser.session.get(f"{chooser.url}/hub/spawn", verify=chooser.cafile, timeout=30)
    assert page.status_code == 200
    images = host.file(f"{cfg['paths']['etc']}/images.json").content_string
    for name in stacks:
        card = re.search(rf'data-stack="{re.escape(name)}".*?</label>', page.text, re.S)
        assert card, f"no card for {name}"
        assert cfg["images"]["stacks"][name]["description"].split()[0] in card.group(0)
        assert name in images
    default = re.search(r'value="([^"]+)" checked', page.text)
    assert default and default.group(1) == cfg["hub"]["default_image"]
