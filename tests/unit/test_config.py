"""Tests of the site configuration: schema, defaults, errors, resolved paths, reference docs.

Invalid files go through `scirepo config check` (in-process) and must exit 2 with a line
that names the offending key; one test runs the real command to see there is no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scirepo import config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "site.example.yml"


def write(tmp_path: Path, text: str, name: str = "site.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(config.schema())


def test_example_is_valid(run_cli):
    cfg = config.load(EXAMPLE)
    assert cfg["site"]["name"] == "Example Seismology Data Repository"
    assert run_cli("config", "check", EXAMPLE) == (0, f"{EXAMPLE}: ok\n", "")


def test_minimal_config_gets_every_default():
    cfg = config.validate({"site": {"name": "x"}})
    assert cfg["site"] == {
        "name": "x",
        "hostname": "localhost",
        "contact_email": "root@localhost.localdomain",
    }
    assert cfg["users"]["uid_min"] == 20000 and cfg["users"]["admins"] == ["sradmin"]
    # Defaults of items and map values are filled too.
    assert cfg["storage"]["sites"] == [{"name": "example-site", "description": ""}]
    assert cfg["images"]["stacks"] == {"base": {"description": "JupyterLab on Python 3.11"}}
    assert list(cfg) == list(config.schema()["properties"])  # schema order
    # The filled config is itself valid: no default contradicts the schema.
    jsonschema.Draft202012Validator(config.schema()).validate(cfg)


def test_defaults_fill_inside_given_sections():
    cfg = config.validate(
        {
            "site": {"name": "x"},
            "users": {"group": "researchers"},
            "storage": {"sites": [{"name": "a"}, {"name": "b", "description": "B"}]},
            "images": {"stacks": {"base": {}, "sci": {"description": "S"}}},
        }
    )
    assert cfg["users"]["group"] == "researchers" and cfg["users"]["uid_max"] == 29999
    assert cfg["storage"]["sites"] == [
        {"name": "a", "description": ""},
        {"name": "b", "description": "B"},
    ]
    assert cfg["storage"]["root"] == "/srv/scirepo"
    assert cfg["images"]["stacks"]["base"] == {"description": ""}


def test_resolve_adds_paths():
    cfg = config.validate(
        {
            "site": {"name": "x"},
            "storage": {"root": "/data/sr/", "sites": [{"name": "a"}, {"name": "b"}]},
        }
    )
    resolved = config.resolve(cfg)
    assert "paths" not in cfg
    assert resolved["paths"] == {
        "root": "/data/sr",
        "data": "/data/sr/data",
        "sites": {"a": "/data/sr/data/a", "b": "/data/sr/data/b"},
        "software": "/data/sr/software",
        "workspaces": "/data/sr/workspaces",
        "upload": "/data/sr/upload",
        "public": "/data/sr/public",
        "groups": "/data/sr/groups",
        "scratch": "/data/sr/scratch",
        "etc": "/etc/scirepo",
        "secrets": "/etc/scirepo/secrets",
        "state": "/var/lib/scirepo",
        "quota_notices": "/var/lib/scirepo/quota",
        "run": "/run/scirepo",
        "authd_socket": "/run/scirepo/authd.sock",
        "venv": "/opt/scirepo/venv",
    }
    layout = {a["path"]: (a["owner"], a["group"], a["mode"]) for a in resolved["layout"]}
    assert layout == {
        "/data/sr": ("root", "root", "0755"),
        "/data/sr/data": ("root", "root", "0755"),
        "/data/sr/data/a": ("root", "scirepo-data", "2775"),
        "/data/sr/data/b": ("root", "scirepo-data", "2775"),
        "/data/sr/software": ("root", "scirepo-data", "2775"),
        "/data/sr/workspaces": ("root", "root", "0711"),
        "/data/sr/upload": ("root", "scirepo-users", "1770"),
        "/data/sr/public": ("root", "scirepo-users", "0750"),
        "/data/sr/groups": ("root", "scirepo-users", "0750"),
        "/data/sr/scratch": ("root", "scirepo-users", "0750"),
    }
    # Parents come before what they hold: the role creates them in this order.
    paths = [a["path"] for a in resolved["layout"]]
    assert all(paths.index(os.path.dirname(p)) < i for i, p in enumerate(paths) if i)


def test_resolve_command_and_resolved_form_loads_back(tmp_path, run_cli):
    code, out, err = run_cli("config", "resolve", EXAMPLE)
    assert (code, err) == (0, "")
    resolved = json.loads(out)["scirepo"]
    assert resolved == config.resolve(config.load(EXAMPLE))
    assert resolved["paths"]["sites"]["station-a"] == "/srv/scirepo/data/station-a"
    # site.json on the host: the same config comes back; operator-side files (absent
    # on the host) are not checked there.
    resolved["tls"] = {"certificate": "/nonexistent/c.pem", "key": "/nonexistent/k.pem"}
    site_json = write(tmp_path, json.dumps({"scirepo": resolved}), "site.json")
    again = config.load(site_json)
    assert config.resolve(again) == resolved
    assert run_cli("--config", site_json, "config", "check")[0] == 0


def test_resolve_output_file(tmp_path, run_cli):
    target = tmp_path / "build" / "site.json"
    assert run_cli("config", "resolve", EXAMPLE, "-o", target)[0] == 0
    assert json.loads(target.read_text())["scirepo"]["paths"]["etc"] == "/etc/scirepo"


def test_relative_operator_paths_are_relative_to_the_site_file(tmp_path, monkeypatch):
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / "certs" / name).write_text("x")
    site = write(
        tmp_path,
        "site: {name: x}\nbuild: {ca_bundle: certs/ca.pem}\n"
        "tls: {certificate: certs/c.pem, key: ./certs/k.pem}\n",
    )
    monkeypatch.chdir("/")
    cfg = config.load(site)
    assert cfg["build"]["ca_bundle"] == str(tmp_path / "certs/ca.pem")
    assert cfg["tls"] == {
        "certificate": str(tmp_path / "certs/c.pem"),
        "key": str(tmp_path / "certs/k.pem"),
    }


INVALID = {
    "unknown top-level key": ("site: {name: x}\nusres: {}\n", "top level: unknown key 'usres'"),
    "unknown nested key": ("site: {name: x}\nhub: {imagez: [base]}\n", "hub: unknown key 'imagez'"),
    "unknown key in list item": (
        "site: {name: x}\nstorage: {sites: [{name: a, descr: x}]}\n",
        "storage.sites[0]: unknown key 'descr'",
    ),
    "wrong type": (
        "site: {name: x}\nusers: {uid_min: '20000'}\n",
        "users.uid_min: must be an integer",
    ),
    "wrong type of section": ("site: {name: x}\nssh: [22]\n", "ssh: must be a mapping"),
    "bad pattern": (
        "site: {name: x}\nusers: {group: Staff}\n",
        "users.group: 'Staff' is not a valid Unix name",
    ),
    "trailing newline": (
        'site: {name: x}\nusers: {group: "staff\\n"}\n',
        "users.group: 'staff\\n' is not a valid Unix name",
    ),
    "bad pattern in list": (
        "site: {name: x}\nhub: {images: [base, Bad]}\n",
        "hub.images[1]: 'Bad'",
    ),
    "bad map key": (
        "site: {name: x}\nimages: {stacks: {base: {}, Sci: {}}}\n",
        "images.stacks: key 'Sci'",
    ),
    "out of range": (
        "site: {name: x}\nlocal: {ssh_port: 70000}\n",
        "local.ssh_port: 70000 is greater",
    ),
    "missing required key": ("site: {hostname: h}\n", "site: missing required key 'name'"),
    "uid_min equals uid_max": (
        "site: {name: x}\nusers: {uid_min: 40000, uid_max: 40000}\n",
        "users.uid_max: must be greater than users.uid_min (40000)",
    ),
    "group gids overlap user ids": (
        "site: {name: x}\nstorage: {groups: {gid_min: 29000, gid_max: 31000}}\n",
        "storage.groups: gids 29000-31000 overlap users.uid_min..users.uid_max (20000-29999)",
    ),
    "gid_min above gid_max": (
        "site: {name: x}\nstorage: {groups: {gid_min: 40000}}\n",
        "storage.groups.gid_max: must be greater than storage.groups.gid_min (40000), got 39999",
    ),
    "bad quota size": (
        "site: {name: x}\nstorage: {quota: {soft: 10GB}}\n",
        "storage.quota.soft: '10GB' is not a valid size",
    ),
    "bad quota user": (
        "site: {name: x}\nstorage: {quota: {users: {Bob: 1G}}}\n",
        "storage.quota.users: key 'Bob' is not a valid Unix name",
    ),
    "bad scratch age": (
        "site: {name: x}\nstorage: {scratch: {max_age_days: 0}}\n",
        "storage.scratch.max_age_days: 0 is less than the minimum 1",
    ),
    "uid_min above uid_max": (
        "site: {name: x}\nusers: {uid_min: 30000}\n",
        "users.uid_max: must be greater than users.uid_min (30000), got 29999",
    ),
    "default_image not in images": (
        "site: {name: x}\nhub: {default_image: sci}\n",
        "hub.default_image: 'sci' is not in hub.images",
    ),
    "image without stack": (
        "site: {name: x}\nhub: {images: [base, sci]}\n",
        "hub.images[1]: 'sci' is not a stack of images.stacks",
    ),
    "no base stack": (
        "site: {name: x}\nhub: {images: [sci], default_image: sci}\nimages: {stacks: {sci: {}}}\n",
        "images.stacks: must define 'base'",
    ),
    "missing ca_bundle file": (
        "site: {name: x}\nbuild: {ca_bundle: /nonexistent/ca.pem}\n",
        "build.ca_bundle: file not found: /nonexistent/ca.pem",
    ),
    "tls key without certificate": (
        "site: {name: x}\ntls: {key: /etc/hostname}\n",
        "tls.certificate: must be set too",
    ),
    "missing tls file": (
        "site: {name: x}\ntls: {certificate: /nonexistent/c.pem, key: /etc/hostname}\n",
        "tls.certificate: file not found",
    ),
    "reserved admin": (
        "site: {name: x}\nusers: {admins: [root]}\n",
        "users.admins[0]: 'root' is a reserved",
    ),
    "admin reserved by config": (
        "site: {name: x}\nusers: {admins: [boss], reserved_names: [boss]}\n",
        "users.admins[0]: 'boss' is a reserved name (users.reserved_names)",
    ),
    "duplicate site names": (
        "site: {name: x}\nstorage: {sites: [{name: a}, {name: a, description: again}]}\n",
        "storage.sites[1].name: 'a' is already used by storage.sites[0]",
    ),
    "yaml syntax error": ("site:\n  name: x\n hub: {}\n", "YAML syntax error at line 3"),
    "duplicate yaml key": (
        "site: {name: x}\nhub: {}\nhub: {}\n",
        "YAML syntax error at line 3, column 1: duplicate key 'hub' (first at line 2)",
    ),
    "empty file": ("", "top level: missing required key 'site'"),
    "not a mapping": ("- site\n", "top level: must be a mapping, got a list"),
}


@pytest.mark.parametrize("text,expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_config_names_the_key(tmp_path, run_cli, text, expected):
    site = write(tmp_path, text)
    code, out, err = run_cli("config", "check", site)
    assert code == 2 and out == ""
    assert f"{site}: {expected}" in err, err
    with pytest.raises(config.ConfigError) as info:
        config.load(site)
    assert any(expected in e for e in info.value.errors)


def test_all_errors_are_reported_at_once(tmp_path, run_cli):
    site = write(
        tmp_path,
        "site: {name: x}\nfoo: 1\nusers: {uid_min: 9}\nhub: {default_image: zz}\n"
        "build: {ca_bundle: /nonexistent}\n",
    )
    code, _, err = run_cli("config", "check", site)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 4, err
    for key in (
        "top level: unknown key 'foo'",
        "users.uid_min",
        "hub.default_image",
        "build.ca_bundle",
    ):
        assert any(key in line for line in lines), key


def test_unreadable_file_is_a_config_error(tmp_path, run_cli):
    code, _, err = run_cli("config", "check", tmp_path / "missing.yml")
    assert code == 2 and "missing.yml: cannot read: No such file or directory" in err


def test_locate_order(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SITE_JSON", str(tmp_path / "site.json"))
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    with pytest.raises(config.ConfigError, match="use --config FILE or SCIREPO_CONFIG"):
        config.locate(None)
    (tmp_path / "site.json").write_text("{}")
    assert config.locate(None) == str(tmp_path / "site.json")
    monkeypatch.setenv(config.CONFIG_ENV, "/from/env.yml")
    assert config.locate(None) == "/from/env.yml"
    assert config.locate("/explicit.yml") == "/explicit.yml"


def test_real_command_exits_2_without_traceback(tmp_path):
    site = write(tmp_path, "site: {name: x}\nusers: {uid_min: 30000, uid_max: 20000}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "scirepo", "config", "check", str(site)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 2
    assert (
        res.stderr
        == f"{site}: users.uid_max: must be greater than users.uid_min (30000), got 20000\n"
    )
    helped = subprocess.run(
        [sys.executable, "-m", "scirepo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "config" in helped.stdout and "user" in helped.stdout


def test_docs_are_current(run_cli):
    code, _, err = run_cli("config", "docs", "--check")
    assert code == 0, f"docs/config.md is stale: run `python3 -m scirepo config docs` ({err})"


def test_docs_check_detects_stale_file(tmp_path, run_cli):
    target = tmp_path / "config.md"
    assert run_cli("config", "docs", "--check", "-o", target)[0] == 1
    assert run_cli("config", "docs", "-o", target)[0] == 0
    assert run_cli("config", "docs", "--check", "-o", target)[0] == 0
    target.write_text(target.read_text() + "edited by hand\n")
    assert run_cli("config", "docs", "--check", "-o", target)[0] == 1


def _keys(node: dict, path: str):
    node = config._deref(node)
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _keys(sub, f"{path}.{key}" if path else key)
    items = node.get("items")
    if isinstance(items, dict):
        for key, sub in config._deref(items).get("properties", {}).items():
            yield from _keys(sub, f"{path}[].{key}")


def test_docs_list_every_key_with_description_and_default():
    docs = config.schema_docs()
    for path, node in _keys(config.schema(), ""):
        if not path:
            continue
        assert f"`{path}`" in docs, path
        assert node.get("description"), f"{path} has no description in the schema"
        section = docs.split(f"# `{path}`\n", 1)[1].split("\n#", 1)[0]  # under its heading
        if "default" in node:
            assert f"Default: `{json.dumps(node['default'])}`" in section, path
        if "enum" in node:  # the allowed values, not "any"
            values = ", ".join(f"`{v}`" for v in node["enum"])
            assert f"Type: one of {values}" in section, path


def test_example_sets_only_schema_keys():
    # Every key of the example is documented (a typo there would also fail the check).
    example = yaml.safe_load(EXAMPLE.read_text())
    docs = config.schema_docs()
    for section, values in example.items():
        for key in values:
            assert f"`{section}.{key}`" in docs
