"""`scirepo health` without a host: result table and exit codes, check ordering and skips,
cleanup on every path, target resolution and the remote shell command lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from scirepo import config as siteconfig
from scirepo import health, remote, tls, users

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "site.example.yml"


@pytest.fixture
def cfg() -> dict:
    return siteconfig.resolve(siteconfig.load(EXAMPLE))


def _report(*statuses: str) -> health.Report:
    report = health.Report(url="https://h", user="health-0")
    for name, status in zip(health.CHECKS, statuses, strict=False):
        report.results.append(health.Result(name, status, 0.5, f"detail of {name}"))
    return report


# --------------------------------------------------------------------------- report


def test_all_ok_exits_0_and_prints_a_row_per_check():
    report = _report(*[health.OK] * len(health.CHECKS))
    assert report.exit_code() == 0 and report.failed == []
    rows = report.table().splitlines()
    assert rows[0].split() == ["check", "status", "seconds", "detail"]
    assert [r.split()[0] for r in rows[1:]] == list(health.CHECKS)
    assert all(r.split()[1] == "ok" for r in rows[1:])
    assert "9 checks ok (" in report.summary()


def test_a_failure_exits_1_and_is_named():
    report = _report(health.OK, health.OK, health.FAILED, health.SKIPPED, health.OK)
    assert report.exit_code() == 1
    assert report.failed == ["hub-login"]
    assert "FAILED: hub-login" in report.summary()
    row = next(r for r in report.table().splitlines() if r.startswith("hub-login"))
    assert row.split()[1:3] == ["FAILED", "0.50"]


def test_skipped_alone_is_not_a_failure():
    report = _report(health.OK, health.SKIPPED)
    assert report.exit_code() == 0
    assert "1 checks ok, 1 skipped" in report.summary()


def test_json_has_every_check_and_the_failed_names():
    data = json.loads(_report(health.OK, health.FAILED).to_json())
    assert data["ok"] is False and data["failed"] == ["user"]
    assert [c["name"] for c in data["checks"]] == ["tls", "user"]
    assert set(data["checks"][0]) == {"name", "status", "seconds", "detail"}


def test_detail_is_one_line_in_the_table():
    report = health.Report(url="u", user="x")
    report.results.append(health.Result("tls", health.FAILED, 1, "a\nb   c"))
    assert report.table().splitlines()[1].endswith("a b c")


# --------------------------------------------------------------------------- runner


def test_runner_times_catches_and_skips_dependents():
    report = health.Report(url="u", user="x")
    run = health.Runner(report)

    def boom():
        raise RuntimeError("no route")

    assert run.check("a", lambda: "fine")
    assert not run.check("b", boom)
    assert not run.check("c", lambda: "never", needs=("a", "b"))
    assert [(r.name, r.status) for r in report.results] == [
        ("a", "ok"),
        ("b", "FAILED"),
        ("c", "skipped"),
    ]
    assert report.results[1].detail == "RuntimeError: no route"
    assert report.results[2].detail == "needs b"


PASSWORD = "pw"  # noqa: S105 - the fake user's


class FakeHub:
    """Stands in for scirepo.hubclient.HubUser; `fail` names the method that raises."""

    fail = ""
    calls: list[str] = []

    def __init__(self, url, name, cafile=True):
        self.name = name

    def _call(self, what, result=None):
        FakeHub.calls.append(what)
        if FakeHub.fail == what:
            raise health.CheckFailed(f"{what} broke")
        return result

    def login(self, password):
        return self._call("login", password == PASSWORD)

    def start_server(self, deadline=120):
        if FakeHub.fail == "interrupt":
            raise KeyboardInterrupt
        return self._call("start_server", 3.0)

    def run_code(self, code):
        return self._call("run_code", {"status": "ok", "stdout": "42 20100 20100\n"})

    def stop_server(self, deadline=60):
        return self._call("stop_server")


@pytest.fixture
def fakes(monkeypatch):
    """Every host-facing step of run_checks replaced; returns the list of cleaned users."""
    import scirepo.hubclient

    FakeHub.fail, FakeHub.calls = "", []
    monkeypatch.setattr(scirepo.hubclient, "HubUser", FakeHub)
    cleaned: list[str] = []
    monkeypatch.setattr(health, "check_tls", lambda url, ca: "verified")
    monkeypatch.setattr(health, "create_user", lambda remote, cfg, name: (20100, PASSWORD))
    monkeypatch.setattr(health, "check_ssh", lambda t, name, pw, uid: "ssh fine")
    monkeypatch.setattr(health, "check_signup", lambda url, ca: "form")
    monkeypatch.setattr(
        health, "cleanup", lambda remote, cfg, name: cleaned.append(name) or "removed"
    )
    remote = health.Remote("h", {"ansible_connection": "local"}, "scirepo-deploy")
    target = health.Target("https://h", "h", 22, True, remote)
    return target, cleaned


def test_run_checks_all_ok(cfg, fakes):
    target, cleaned = fakes
    report = health.run_checks(cfg, target)
    assert [r.name for r in report.results] == list(health.CHECKS)
    assert report.ok, report.table()
    assert cleaned == [report.user] and report.user.startswith("health-")


def test_a_failed_ssh_check_leaves_the_others_running_and_cleans_up(cfg, fakes, monkeypatch):
    target, cleaned = fakes

    def no_ssh(t, name, pw, uid):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(health, "check_ssh", no_ssh)
    report = health.run_checks(cfg, target)
    assert report.failed == ["ssh"]
    assert {r.name: r.status for r in report.results}["server-stop"] == "ok"
    assert cleaned == [report.user]


def test_a_failed_login_skips_the_server_checks(cfg, fakes, monkeypatch):
    target, cleaned = fakes
    monkeypatch.setattr(health, "create_user", lambda remote, cfg, name: (20100, "wrong"))
    report = health.run_checks(cfg, target)
    status = {r.name: r.status for r in report.results}
    assert status["hub-login"] == "FAILED"
    assert status["server-start"] == status["kernel"] == status["server-stop"] == "skipped"
    assert status["ssh"] == status["signup"] == status["cleanup"] == "ok"
    assert report.failed == ["hub-login"]


def test_wrong_kernel_output_fails_the_kernel_check(cfg, fakes, monkeypatch):
    target, _ = fakes
    monkeypatch.setattr(
        FakeHub, "run_code", lambda self, code: {"status": "ok", "stdout": "42 0 0\n"}
    )
    report = health.run_checks(cfg, target)
    assert report.failed == ["kernel"]


def test_an_interrupt_still_cleans_up(cfg, fakes):
    target, cleaned = fakes
    FakeHub.fail = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        health.run_checks(cfg, target)
    assert len(cleaned) == 1


def test_a_failed_cleanup_fails_the_run(cfg, fakes, monkeypatch):
    target, _ = fakes

    def left(remote, cfg, name):
        raise health.CheckFailed("left behind: workspace-left")

    monkeypatch.setattr(health, "cleanup", left)
    report = health.run_checks(cfg, target)
    assert report.failed == ["cleanup"]


def test_signup_is_skipped_when_accounts_are_off(cfg, fakes):
    target, _ = fakes
    cfg["accounts"]["enabled"] = False
    report = health.run_checks(cfg, target)
    assert report.ok and {r.name: r.status for r in report.results}["signup"] == "skipped"


# --------------------------------------------------------------------------- target


def test_username_passes_the_user_rules(cfg):
    for _ in range(20):
        name = health.new_username(cfg)
        assert users.USERNAME_RE.fullmatch(name)
        assert siteconfig.reserved_reason(name, cfg["users"]["reserved_names"]) is None


LOCAL_VARS = {
    "ansible_host": "127.0.0.1",
    "ansible_port": 2222,
    "ansible_user": "scirepo-deploy",
    "ansible_ssh_private_key_file": "/k/deploy_key",
    "ansible_ssh_common_args": "-o UserKnownHostsFile=/k/known_hosts -o StrictHostKeyChecking=no",
}


def test_local_target_defaults(cfg, monkeypatch, tmp_path):
    inv = tmp_path / "inventory.json"
    inv.write_text("{}")
    monkeypatch.setattr(health, "LOCAL_INVENTORY", inv)
    monkeypatch.setattr(health, "inventory_hosts", lambda i: {"scirepo-host": LOCAL_VARS})
    monkeypatch.setattr(tls, "CA_CERT", inv)  # any existing file
    for inventory in (None, inv):
        t = health.target(cfg, inventory)
        assert t.url == f"https://localhost:{cfg['local']['https_port']}"
        assert (t.ssh_host, t.ssh_port) == ("127.0.0.1", cfg["local"]["ssh_port"])
        assert t.cafile == str(inv)
        assert t.remote.known_hosts == ["/k/known_hosts"]
        assert t.remote.argv[:1] == ["ssh"] and "scirepo-deploy@127.0.0.1" in t.remote.argv
        assert t.remote.argv[-4:] == ["sudo", "-n", "bash", "-s"]
        assert t.remote.argv[t.remote.argv.index("-p") + 1] == "2222"


def test_real_target_uses_the_public_name(cfg, monkeypatch, tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text("all: {}")
    monkeypatch.setattr(health, "inventory_hosts", lambda i: {"repo1": {"ansible_user": "root"}})
    cfg["site"]["hostname"] = "repo.example.org"
    cfg["ssh"]["port"] = 2200
    cfg["tls"]["certificate"] = "/etc/cert.pem"
    t = health.target(cfg, inv)
    assert t.url == "https://repo.example.org"
    assert (t.ssh_host, t.ssh_port) == ("repo.example.org", 2200)
    assert t.cafile is True  # a real certificate: the system CAs
    assert "root@repo1" in t.remote.argv and "sudo" not in t.remote.argv
    t = health.target(cfg, inv, url="https://10.0.0.5:8443/", ssh="10.0.0.5:22", cafile=str(inv))
    assert (t.url, t.ssh_host, t.ssh_port, t.cafile) == (
        "https://10.0.0.5:8443",
        "10.0.0.5",
        22,
        str(inv),
    )


def test_target_errors(cfg, monkeypatch, tmp_path):
    inv = tmp_path / "inventory.yml"
    with pytest.raises(health.HealthError, match="no inventory"):
        health.target(cfg, inv)
    inv.write_text("all: {}")
    monkeypatch.setattr(health, "inventory_hosts", lambda i: {"a": {}, "b": {}})
    with pytest.raises(health.HealthError, match="choose one with --host"):
        health.target(cfg, inv)
    with pytest.raises(health.HealthError, match="no host 'c'"):
        health.target(cfg, inv, host="c")
    with pytest.raises(health.HealthError, match="--url"):
        health.target(cfg, inv, host="a", url="http://plain")
    with pytest.raises(health.HealthError, match="CA file"):
        health.target(cfg, inv, host="a", cafile=str(tmp_path / "missing.crt"))


def test_docker_connection_runs_in_the_container(cfg):
    r = health.Remote("h", {"ansible_connection": "community.docker.docker"}, "d")
    assert r.argv == ["docker", "exec", "-i", "h", "bash", "-s"]
    with pytest.raises(remote.RemoteError, match="not supported"):
        health.Remote("h", {"ansible_connection": "winrm"}, "d")


def test_remote_scripts_are_valid_bash(cfg):
    for script in (health.cleanup_script(cfg, "health-0a"), health._user_script(cfg, "health-0a")):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_cli_config_errors_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("health", "--site", EXAMPLE, "-i", tmp_path / "none.yml")
    assert code == 2 and "no inventory" in err


# --------------------------------------------------------------------------- deploy


def test_after_deploy_passes_the_exit_code_and_says_the_deploy_finished(monkeypatch, capsys):
    monkeypatch.setattr(health, "run", lambda site, inventory: 0)
    assert health.after_deploy(Path("site.yml")) == 0
    assert "not healthy" not in capsys.readouterr().err

    monkeypatch.setattr(health, "run", lambda site, inventory: 1)
    assert health.after_deploy(Path("site.yml"), None) == 1
    err = capsys.readouterr().err
    assert "The deploy finished, but the host is not healthy" in err
    assert "scirepo health --site site.yml" in err

    def config_error(site, inventory):
        raise health.HealthError("CA file /x does not exist")

    monkeypatch.setattr(health, "run", config_error)
    assert health.after_deploy(Path("site.yml")) == 2
    assert "CA file /x does not exist" in capsys.readouterr().err


def test_after_deploy_leaves_several_hosts_to_the_operator(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(health, "inventory_hosts", lambda i: {"a": {}, "b": {}})
    monkeypatch.setattr(health, "run", lambda site, inventory: pytest.fail("ran"))
    assert health.after_deploy(Path("site.yml"), tmp_path / "inv.yml") == 0
    assert "--host H" in capsys.readouterr().out


def test_deploy_and_local_up_have_no_health():
    from scirepo import cli

    parser = cli.build_parser()
    assert parser.parse_args(["deploy", "-i", "inv", "--no-health"]).no_health
    assert not parser.parse_args(["local", "up"]).no_health
    assert parser.parse_args(["local", "up", "--no-health"]).no_health
