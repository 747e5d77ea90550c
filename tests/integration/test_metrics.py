"""Metrics (ansible/roles/metrics, `metrics` in the site config): the hub's /hub/metrics
answers only to the scraper's token, the exporters listen on the host's loopback only, and
Prometheus (metrics.prometheus, on in site.example.yml) really scrapes every target.

Prometheus' API is queried from inside the host (it listens on 127.0.0.1 there only).
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
import requests

from tests.integration.conftest import on_host

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def metrics(cfg) -> dict:
    if not cfg["metrics"]["enabled"]:
        pytest.skip("metrics.enabled is off in this site config")
    return cfg["metrics"]


@pytest.fixture(scope="module")
def scraper_token(local_host, cfg, metrics) -> str:
    res = on_host(cfg, "cat", f"{cfg['paths']['secrets']}/prometheus_hub_token")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _prometheus(cfg: dict, path: str) -> dict:
    """GET http://127.0.0.1:PORT/api/v1/PATH on the host, as JSON."""
    url = f"http://127.0.0.1:{cfg['metrics']['prometheus_port']}/api/v1/{path}"
    res = on_host(
        cfg,
        "python3",
        "-c",
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
        url,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _query(cfg: dict, promql: str) -> list[dict]:
    answer = _prometheus(cfg, "query?query=" + urllib.parse.quote(promql))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _eventually(cfg: dict, promql: str, deadline: float = 90) -> list[dict]:
    """The query's result once it is not empty (scrapes and the container timer run every
    metrics.scrape_interval)."""
    t0 = time.monotonic()
    while True:
        result = _query(cfg, promql)
        if result or time.monotonic() - t0 > deadline:
            return result
        time.sleep(2)


# --------------------------------------------------------------- the hub's own metrics


def test_hub_metrics_refuse_anonymous(hub_url, cafile):
    """Whatever `metrics` says: JupyterHub's authenticate_prometheus, set explicitly."""
    res = requests.get(f"{hub_url}/hub/metrics", verify=cafile, timeout=30)
    assert res.status_code == 403
    assert "jupyterhub_" not in res.text


def test_hub_metrics_answer_the_scraper_token(hub_url, cafile, scraper_token):
    for scheme in ("Bearer", "token"):
        res = requests.get(
            f"{hub_url}/hub/metrics",
            headers={"Authorization": f"{scheme} {scraper_token}"},
            verify=cafile,
            timeout=30,
        )
        assert res.status_code == 200, res.text[:300]
        assert "jupyterhub_total_users" in res.text


def test_scraper_token_reads_metrics_only(hub_url, cafile, scraper_token):
    headers = {"Authorization": f"Bearer {scraper_token}"}
    whoami = requests.get(f"{hub_url}/hub/api/user", headers=headers, verify=cafile, timeout=30)
    assert whoami.status_code == 200
    assert whoami.json()["kind"] == "service"
    assert whoami.json()["name"] == "prometheus"
    assert set(whoami.json()["scopes"]) == {"read:metrics"}
    users = requests.get(f"{hub_url}/hub/api/users", headers=headers, verify=cafile, timeout=30)
    assert users.status_code == 403


def test_hub_metrics_refuse_a_platform_user(users, metrics):
    """Neither a user's login cookie nor the user's API token may read the metrics."""
    _, _, hub = users.logged_in("met")
    url = f"{hub.url}/hub/metrics"
    assert hub.session.get(url, verify=hub.cafile, timeout=30).status_code == 403
    headers = {"Authorization": f"token {hub.token}"}
    assert requests.get(url, headers=headers, verify=hub.cafile, timeout=30).status_code == 403


# --------------------------------------------------------------- secrets and sockets


def test_scraper_token_is_root_only(host, cfg, metrics):
    token = host.file(f"{cfg['paths']['secrets']}/prometheus_hub_token")
    assert (token.user, token.group, token.mode) == ("root", "root", 0o600)
    assert len(token.content_string.strip()) == 64


@pytest.mark.parametrize("kind", ["node_exporter", "docker_engine", "prometheus"])
def test_exporters_listen_on_loopback_only(host, cfg, metrics, kind):
    if kind == "docker_engine" and not metrics["docker_engine"]:
        pytest.skip("metrics.docker_engine is off")
    if kind == "prometheus" and not metrics["prometheus"]:
        pytest.skip("metrics.prometheus is off")
    port = metrics[f"{kind}_port"]
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening
    # Nothing else on the host answers on that port at its other addresses either.
    addresses = host.check_output("hostname -I").split()
    for addr in addresses:
        assert host.run(f"timeout 3 bash -c '</dev/tcp/{addr}/{port}'").rc != 0, addr


def test_exporters_are_not_reachable_through_nginx(hub_url, cafile, metrics):
    for path in ("/metrics", "/api/v1/targets"):
        res = requests.get(f"{hub_url}{path}", verify=cafile, timeout=30, allow_redirects=False)
        assert "node_" not in res.text and "activeTargets" not in res.text


def test_container_metrics_timer_writes_the_textfile(host, metrics):
    assert host.service("scirepo-container-metrics.timer").is_running
    prom = host.file("/var/lib/prometheus/node-exporter/scirepo_containers.prom")
    # Rewritten every scrape_interval (seconds or minutes).
    number, unit = metrics["scrape_interval"][:-1], metrics["scrape_interval"][-1]
    interval = int(number) * (60 if unit == "m" else 1)
    # The hub's container may be new (test_limits restarts the hub as it ends): a run of
    # the timer after that lists it.
    deadline = time.monotonic() + interval * 3 + 10
    while 'scirepo_container_memory_bytes{name="scirepo-hub"}' not in prom.content_string:
        assert time.monotonic() < deadline, prom.content_string
        time.sleep(2)
    age = time.time() - prom.mtime.timestamp()
    assert age < interval * 3 + 10


# --------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def prometheus(local_host, cfg, metrics) -> dict:
    if not metrics["prometheus"]:
        pytest.skip("metrics.prometheus is off in this site config")
    return metrics


def test_prometheus_runs_with_the_configured_retention(host, prometheus):
    assert host.service("prometheus").is_running
    cmdline = host.check_output("cat /proc/$(pidof prometheus)/cmdline | tr '\\0' ' '")
    assert f"--storage.tsdb.retention.time={prometheus['retention']}" in cmdline
    token = host.file("/etc/prometheus/scirepo-hub-token")
    assert (token.user, token.mode) == ("prometheus", 0o400)


def test_prometheus_scrapes_every_target(cfg, prometheus):
    expected = {"prometheus", "hub", "node"}
    if prometheus["docker_engine"]:
        expected.add("docker")
    t0 = time.monotonic()
    while True:
        targets = _prometheus(cfg, "targets?state=active")["data"]["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        if all(health.get(job, ("",))[0] == "up" for job in expected):
            break
        if time.monotonic() - t0 > 90:
            break
        time.sleep(3)
    assert {job: health.get(job) for job in expected} == {job: ("up", "") for job in expected}
    hub = next(t for t in targets if t["labels"]["job"] == "hub")
    assert hub["scrapeUrl"].endswith("/hub/metrics")


@pytest.mark.parametrize(
    "promql",
    [
        'up{job="hub"} == 1',
        'jupyterhub_total_users{job="hub"} >= 1',
        'node_memory_MemAvailable_bytes{job="node"} > 0',
        'scirepo_container_memory_bytes{job="node", name="scirepo-hub"} > 0',
        'rate(scirepo_container_cpu_seconds_total{job="node", name="scirepo-hub"}[2m]) >= 0',
        'engine_daemon_container_states_containers{job="docker", state="running"} >= 2',
    ],
)
def test_prometheus_has_scraped(cfg, prometheus, promql):
    if 'job="docker"' in promql and not prometheus["docker_engine"]:
        pytest.skip("metrics.docker_engine is off")
    assert _eventually(cfg, promql), f"no result for {promql}"


def test_a_user_server_shows_up_in_the_container_metrics(users, cfg, prometheus):
    name, _, hub = users.logged_in("met")
    hub.start_server()
    try:
        series = _eventually(
            cfg, f'scirepo_container_memory_bytes{{job="node", name="jupyter-{name}"}} > 0'
        )
        assert series, f"jupyter-{name} never appeared in Prometheus"
        limit = _query(cfg, f'scirepo_container_memory_limit_bytes{{name="jupyter-{name}"}}')
        docker = on_host(
            cfg, "docker", "inspect", "-f", "{{.HostConfig.Memory}}", f"jupyter-{name}"
        )
        assert limit and float(limit[0]["value"][1]) == float(docker.stdout.strip())
    finally:
        hub.stop_server()
