"""Host state of the docker, images and hub roles (pytest-testinfra, against the local host)."""

from __future__ import annotations

import json

import pytest

from .conftest import bridge_gateway

pytestmark = pytest.mark.host


@pytest.mark.parametrize("service", ["docker", "scirepo-proxy", "scirepo-hub", "nginx"])
def test_service_is_enabled_and_running(host, service):
    svc = host.service(service)
    assert svc.is_enabled
    assert svc.is_running


@pytest.mark.parametrize(
    "address",
    ["tcp://0.0.0.0:443", "tcp://0.0.0.0:80", "tcp://127.0.0.1:8000", "tcp://0.0.0.0:22"],
)
def test_port_is_listening(host, address):
    assert host.socket(address).is_listening


def test_proxy_is_not_published_beyond_loopback(host):
    assert not host.socket("tcp://0.0.0.0:8000").is_listening


def test_tls_key_is_root_only(host, cfg):
    key = host.file(f"{cfg['paths']['etc']}/tls/server.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


@pytest.mark.parametrize("name", ["jupyterhub_cookie_secret", "proxy.env"])
def test_generated_hub_secret(host, cfg, name):
    secret = host.file(f"{cfg['paths']['secrets']}/{name}")
    assert (secret.user, secret.mode) == ("root", 0o600)
    assert len(secret.content_string.strip()) >= 64


def test_images_on_the_host_are_the_built_digests(host, cfg):
    """Every image the hub may start is on the host under the digest the build recorded."""
    images = json.loads(host.file(f"{cfg['paths']['etc']}/images.json").content_string)
    refs = [images["scirepo_images"]["hub"]["ref"]] + [
        images["scirepo_images"]["stacks"][name]["ref"] for name in cfg["hub"]["images"]
    ]
    for ref in refs:
        assert "@sha256:" in ref
        host.run_expect([0], f"docker image inspect {ref}")
    hub = host.run("docker inspect -f '{{.Config.Image}}' scirepo-hub").stdout.strip()
    assert hub == images["scirepo_images"]["hub"]["ref"]


def test_engine_trusts_only_the_configured_registry_ca(host, cfg):
    ca = host.file(f"/etc/docker/certs.d/{cfg['images']['registry']}/ca.crt")
    assert ca.exists and "BEGIN CERTIFICATE" in ca.content_string


def test_hub_and_proxy_are_on_the_platform_network_and_the_servers_bridge(host):
    for network in ("scirepo", "bridge"):
        net = json.loads(host.check_output(f"docker network inspect {network}"))[0]
        names = {c["Name"] for c in net["Containers"].values()}
        assert {"scirepo-hub", "scirepo-proxy"} <= names, network


def test_hub_api_is_published_on_the_bridge_gateway_only(host, cfg):
    gateway = bridge_gateway(cfg)
    assert host.check_output("docker port scirepo-hub 8081").split() == [f"{gateway}:8081"]
    assert not host.socket("tcp://0.0.0.0:8081").is_listening
