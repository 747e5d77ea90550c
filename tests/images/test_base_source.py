"""Where the Debian base comes from: a registry when one is reachable, else the local one
(bootstrapped with debootstrap on a machine that never had one)."""

from __future__ import annotations

import copy

import pytest

from scirepo import images, local
from scirepo.dockercli import docker


def _image_id(ref: str) -> str:
    return docker("image", "inspect", "-f", "{{.Id}}", ref, capture=True).strip()


@pytest.fixture(scope="module")
def push_registry(local_host, cfg) -> str:
    return f"{local.gateway_ip()}:{cfg['local']['registry_port']}"


def test_base_is_pulled_from_a_reachable_registry(cfg, push_registry, capsys):
    ref = f"{push_registry}/scirepo-test/debian:bookworm"
    docker("tag", images.DEBIAN_IMAGE, ref, capture=True)
    docker("push", ref, capture=True)
    docker("rmi", ref, capture=True)  # so that the pull below really fetches it
    want = copy.deepcopy(cfg)
    want["build"]["base_image"] = ref
    assert images.ensure_base_image(want) == images.DEBIAN_IMAGE
    assert "pulling the Debian base" in capsys.readouterr().out
    assert _image_id(ref) == _image_id(images.DEBIAN_IMAGE)
    docker("rmi", ref, capture=True)


def test_unreachable_registry_falls_back_to_the_local_base(cfg, capsys):
    before = _image_id(images.DEBIAN_IMAGE)
    want = copy.deepcopy(cfg)
    want["build"]["base_image"] = "127.0.0.1:9/nowhere/debian:bookworm"
    assert images.ensure_base_image(want) == images.DEBIAN_IMAGE
    out = capsys.readouterr().out
    assert "not reachable" in out and "127.0.0.1:9" in out
    assert _image_id(images.DEBIAN_IMAGE) == before
