"""scirepo-fs, the fsspec URL schemes of the data areas (images/base/scirepo-fs), and the
mapping the hub gives it (scirepo.storage.notebook_fs).

The package is installed from its source as the base image installs it (pip, no index, no
dependencies, its own build backend) into a temporary directory. Then, with a real
`SCIREPO_FS` made by notebook_fs from a resolved site config over temporary directories:
every scheme reads and writes the right place; `..` and unknown names are refused; missing
areas and a missing or broken SCIREPO_FS are named; fsspec finds the schemes through the
entry points in a fresh interpreter with no import. S3: the same round trips against moto's
S3 server (a stand-in for an S3-compatible service, run on a loopback port).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from scirepo import config
from scirepo.storage import notebook_fs
from tests.unit.conftest import REPO

SOURCE = REPO / "images" / "base" / "scirepo-fs"
SCHEMES = ["sites", "software", "workspace", "scratch", "upload", "public", "group"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """scirepo-fs installed from its source into a target directory, on sys.path."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--no-cache-dir", "--target", str(target), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    # fsspec reads the entry points when it is imported: read them again now.
    fsspec.process_entries()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.split(".")[0] == "scirepo_fs"]:
        del sys.modules[name]


def site_paths(root: Path, extra_areas: bool = True) -> dict:
    cfg = {"site": {"name": "x"}, "storage": {"root": str(root), "sites": [{"name": "st-a"}]}}
    cfg["storage"]["sites"].append({"name": "st-b"})
    paths = config.resolve(config.validate(cfg))["paths"]
    if extra_areas:  # the layout of the areas that config.resolve may not have yet
        paths |= {a: f"{root}/{a}" for a in ("public", "groups", "scratch")}
    else:
        for area in ("public", "groups", "scratch"):
            paths.pop(area, None)
    return paths


@pytest.fixture
def area_root(tmp_path, monkeypatch, installed) -> Path:
    """An area layout under tmp_path and the SCIREPO_FS of user alice for it."""
    paths = site_paths(tmp_path)
    for rel in ("data/st-a", "data/st-b", "data/old-site", "software", "upload"):
        (tmp_path / rel).mkdir(parents=True)
    for rel in ("workspaces/alice", "workspaces/bob", "scratch/alice", "public/bob", "groups/g1"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "data/st-a/x.txt").write_text("site a\n")
    (tmp_path / "data/old-site/y.txt").write_text("not configured\n")
    monkeypatch.setenv("SCIREPO_FS", notebook_fs.environment(paths, {})["SCIREPO_FS"])
    monkeypatch.setenv("NB_USER", "alice")
    return tmp_path


# --------------------------------------------------------------------------- the mapping


def test_mapping_local_is_the_resolved_paths():
    paths = site_paths(Path("/srv/scirepo"))
    doc = json.loads(notebook_fs.environment(paths, {"backend": "local"})["SCIREPO_FS"])
    assert doc == {
        "backend": "local",
        "areas": {
            "data": "/srv/scirepo/data",
            "sites": ["st-a", "st-b"],
            "software": "/srv/scirepo/software",
            "workspaces": "/srv/scirepo/workspaces",
            "upload": "/srv/scirepo/upload",
            "public": "/srv/scirepo/public",
            "groups": "/srv/scirepo/groups",
            "scratch": "/srv/scirepo/scratch",
        },
    }
    assert notebook_fs.mounts({"backend": "local"}, "alice") == []


def test_mapping_leaves_out_areas_the_site_lacks():
    doc = notebook_fs.mapping(site_paths(Path("/srv/scirepo"), extra_areas=False), {})
    assert set(doc["areas"]) == {"data", "sites", "software", "workspaces", "upload"}


def test_mapping_s3_keys_follow_the_layout_below_root():
    fs_cfg = config.validate(
        {
            "site": {"name": "x"},
            "storage": {
                "fsspec": {
                    "backend": "s3",
                    "s3": {
                        "endpoint_url": "https://s3.example.org",
                        "bucket": "bkt",
                        "prefix": "p/q",
                    },
                }
            },
        }
    )["storage"]["fsspec"]
    doc = notebook_fs.mapping(site_paths(Path("/srv/scirepo")), fs_cfg)
    assert doc["areas"]["data"] == "bkt/p/q/data"
    assert doc["areas"]["workspaces"] == "bkt/p/q/workspaces"
    assert doc["areas"]["groups"] == "bkt/p/q/groups"
    assert doc["s3"] == {
        "endpoint_url": "https://s3.example.org",
        "region": "",
        "credentials_file": notebook_fs.CREDENTIALS_TARGET,
    }
    # The secret is a mounted file, never in the environment.
    assert notebook_fs.mounts(fs_cfg, "alice") == [
        {
            "type": "bind",
            "source": "/etc/scirepo/s3-credentials/alice",
            "target": notebook_fs.CREDENTIALS_TARGET,
            "read_only": True,
        }
    ]
    top = notebook_fs.mapping(
        site_paths(Path("/srv/scirepo")), {**fs_cfg, "s3": {**fs_cfg["s3"], "prefix": ""}}
    )
    assert top["areas"]["software"] == "bkt/software"


def test_mapping_s3_without_bucket_is_refused():
    with pytest.raises(notebook_fs.NotebookFSError, match="bucket"):
        notebook_fs.mapping(site_paths(Path("/r")), {"backend": "s3", "s3": {}})
    with pytest.raises(notebook_fs.NotebookFSError, match="'ftp' is not local or s3"):
        notebook_fs.mapping(site_paths(Path("/r")), {"backend": "ftp"})


def test_config_s3_backend_needs_endpoint_and_bucket(tmp_path, run_cli):
    path = tmp_path / "site.yml"
    path.write_text("site: {name: x}\nstorage: {fsspec: {backend: s3, s3: {prefix: a/../b}}}\n")
    code, _, err = run_cli("config", "check", path)
    assert code == 2
    assert "storage.fsspec.s3.endpoint_url: must be set" in err
    assert "storage.fsspec.s3.bucket: must be set" in err
    assert "storage.fsspec.s3.prefix" in err


def test_hub_gives_the_spawner_storage_fsspec():
    from tests.unit.test_hub_config import hub_config

    c = hub_config({"storage": {"fsspec": {"backend": "local"}}})
    assert c.ScirepoSpawner.fsspec["backend"] == "local"
    assert c.ScirepoSpawner.paths["data"] == "/srv/scirepo/data"


def test_spawner_sets_the_environment_and_mounts():
    """The spawner's start() calls notebook_fs with its paths and storage.fsspec."""
    text = (REPO / "scirepo" / "hub" / "spawner.py").read_text()
    assert "notebook_fs.environment(self.paths, self.fsspec)" in text
    assert 'notebook_fs.mounts(self.fsspec, user["name"])' in text


# --------------------------------------------------------------------------- local backend


def test_every_scheme_writes_where_its_area_is(area_root):
    targets = {
        "sites://st-b/new.txt": "data/st-b/new.txt",
        "software://lib/tool.py": "software/lib/tool.py",
        "workspace://results/r.txt": "workspaces/alice/results/r.txt",
        "scratch://tmp/s.txt": "scratch/alice/tmp/s.txt",
        "upload://st-a/up.txt": "upload/st-a/up.txt",
        "public://bob/fig.txt": "public/bob/fig.txt",
        "group://g1/shared.txt": "groups/g1/shared.txt",
    }
    assert sorted(u.split(":")[0] for u in targets) == sorted(SCHEMES)
    for url, rel in targets.items():
        with fsspec.open(url, "w", auto_mkdir=True) as f:
            f.write(url)
        assert (area_root / rel).read_text() == url
        with fsspec.open(url, "r") as f:
            assert f.read() == url


def test_round_trips_with_ls_put_get_and_rm(area_root, tmp_path_factory):
    local = tmp_path_factory.mktemp("local")
    (local / "in.bin").write_bytes(bytes(range(256)) * 100)
    fs = fsspec.filesystem("workspace")
    fs.put(str(local / "in.bin"), "workspace://run1/in.bin")
    assert (area_root / "workspaces/alice/run1/in.bin").read_bytes() == bytes(range(256)) * 100
    assert fs.ls("workspace://run1", detail=False) == ["run1/in.bin"]
    assert fs.info("run1/in.bin")["size"] == 25600
    fs.get("workspace://run1/in.bin", str(local / "out.bin"))
    assert (local / "out.bin").read_bytes() == (local / "in.bin").read_bytes()
    fs.cp_file("run1/in.bin", "run1/copy.bin")
    assert sorted(fs.find("workspace://")) == ["run1/copy.bin", "run1/in.bin"]
    assert fs.glob("workspace://run1/c*") == ["run1/copy.bin"]
    fs.rm("workspace://run1", recursive=True)
    assert not (area_root / "workspaces/alice/run1").exists()


def test_sites_root_lists_the_configured_sites_only(area_root):
    fs, path = fsspec.core.url_to_fs("sites://")
    assert sorted(fs.ls(path, detail=False)) == ["st-a", "st-b"]
    assert fs.find("sites://") == ["st-a/x.txt"]
    assert fs.glob("sites://*/*.txt") == ["st-a/x.txt"]
    assert fs.cat_file("sites://st-a/x.txt") == b"site a\n"
    with pytest.raises(FileNotFoundError, match="no site data named 'old-site' .sites: st-a, st-b"):
        fs.cat_file("sites://old-site/y.txt")


def test_named_roots_list_the_names(area_root):
    assert fsspec.filesystem("public").ls("/", detail=False) == ["bob"]
    assert fsspec.filesystem("group").ls("group://", detail=False) == ["g1"]


def test_the_user_comes_from_nb_user(area_root, monkeypatch):
    monkeypatch.setenv("NB_USER", "bob")
    with fsspec.open("workspace://b.txt", "w") as f:
        f.write("bob's")
    assert (area_root / "workspaces/bob/b.txt").read_text() == "bob's"
    monkeypatch.setenv("NB_USER", "../x")
    with pytest.raises(ValueError, match="NB_USER='../x' is not a user name"):
        fsspec.filesystem("workspace")


@pytest.mark.parametrize(
    "url",
    [
        "workspace://../bob/secret",
        "workspace://a/../../bob/secret",
        "scratch://..",
        "sites://st-a/../old-site/y.txt",
        "software://../workspaces/bob",
        "upload://../data",
        "public://bob/../../workspaces/bob",
        "group://../public",
    ],
)
def test_dotdot_never_leaves_the_area(area_root, url):
    scheme = url.split(":")[0]
    with pytest.raises(ValueError, match=rf"{scheme}://.*'\.\.' is not allowed"):
        fsspec.open(url, "rb").open()
    with pytest.raises(ValueError, match="'..' is not allowed"):
        fsspec.filesystem(scheme).ls(url)


def test_a_bad_name_is_refused(area_root):
    with pytest.raises(ValueError, match="'-x' is not a valid name"):
        fsspec.filesystem("public").ls("public://-x/y")


def test_leading_slashes_stay_inside_the_area(area_root):
    fs = fsspec.filesystem("workspace")
    fs.pipe_file("workspace:///abs.txt", b"in the workspace")
    assert (area_root / "workspaces/alice/abs.txt").read_bytes() == b"in the workspace"


def test_missing_areas_are_named(area_root, monkeypatch):
    doc = notebook_fs.mapping(site_paths(area_root, extra_areas=False), {})
    monkeypatch.setenv("SCIREPO_FS", json.dumps(doc))
    for scheme, what in (("public", "public area"), ("group", "group area")):
        with pytest.raises(ValueError, match=f"this site has no {what}: {scheme}:// needs"):
            fsspec.open(f"{scheme}://bob/x").open()
    with pytest.raises(ValueError, match="this site has no scratch area"):
        fsspec.filesystem("scratch")
    assert fsspec.filesystem("workspace").ls("/") == []  # the others still work


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "SCIREPO_FS is not set: scirepo URLs"),
        ("{not json", "SCIREPO_FS is not valid JSON"),
        ("[]", 'must be a JSON object with an object "areas"'),
        ('{"backend": "ftp", "areas": {}}', "backend 'ftp' is not one of local, s3"),
        ('{"areas": {"sites": "st-a"}}', "areas.sites must be a list of site names"),
        ('{"areas": {"data": "/"}}', "areas.data must be a non-empty path"),
        ('{"backend": "s3", "areas": {}}', 'backend s3 needs an object "s3"'),
    ],
)
def test_a_broken_mapping_is_named(installed, monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("SCIREPO_FS", raising=False)
    else:
        monkeypatch.setenv("SCIREPO_FS", value)
    with pytest.raises(ValueError, match=message):
        fsspec.open("sites://st-a/x").open()


def test_entry_points_register_every_scheme_without_an_import(area_root, installed):
    """A fresh interpreter: fsspec alone finds the schemes (`fsspec.specs` entry points)."""
    code = (
        "import sys, fsspec\n"
        "assert 'scirepo_fs' not in sys.modules\n"
        f"print(sorted(p for p in fsspec.available_protocols() if p in {SCHEMES!r}))\n"
        "print(fsspec.open('sites://st-a/x.txt', 'rt').open().read(), end='')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [repr(sorted(SCHEMES)), "site a"]


def test_the_wheel_has_the_metadata_of_pyproject(installed):
    dist = installed / "scirepo_fs-0.1.0.dist-info"
    metadata = (dist / "METADATA").read_text()
    assert "Name: scirepo-fs\n" in metadata and "Requires-Dist: fsspec\n" in metadata
    assert 'Requires-Dist: s3fs ; extra == "s3"' in metadata
    entry_points = (dist / "entry_points.txt").read_text()
    for scheme in SCHEMES:
        assert f"\n{scheme} = scirepo_fs:" in entry_points
    record = (dist / "RECORD").read_text()
    assert "scirepo_fs/areas.py,sha256=" in record


# --------------------------------------------------------------------------- S3 backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a loopback port: a stand-in for an S3-compatible service."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline, delay = time.monotonic() + 30, 0.05
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_site(s3_server, tmp_path, monkeypatch, installed):
    """SCIREPO_FS of backend s3 (bucket `areas`, prefix `site1`) and alice's credentials."""
    import s3fs  # only the S3 tests need it (pyproject.toml [test]), as notebooks do

    creds = tmp_path / "alice.ini"
    creds.write_text("[default]\naws_access_key_id = AKIDALICE\naws_secret_access_key = s3cr3t\n")
    fs_cfg = {
        "backend": "s3",
        "s3": {"endpoint_url": s3_server, "bucket": "areas", "prefix": "site1", "region": ""},
    }
    doc = notebook_fs.mapping(site_paths(Path("/srv/scirepo")), fs_cfg)
    doc["s3"]["credentials_file"] = str(creds)  # the server's mount target, here a temp file
    monkeypatch.setenv("SCIREPO_FS", json.dumps(doc))
    monkeypatch.setenv("NB_USER", "alice")
    # moto accepts any key; these stand for the operator's.
    admin = s3fs.S3FileSystem(endpoint_url=s3_server, key="admin", secret="admin")  # noqa: S106
    if not admin.exists("areas"):
        admin.mkdir("areas")
    admin.pipe_file("areas/site1/data/st-a/x.txt", b"site a in s3\n")
    admin.invalidate_cache()
    yield admin
    admin.rm("areas/site1", recursive=True)


def test_s3_round_trips(s3_site, tmp_path):
    with fsspec.open("workspace://run/r.txt", "w") as f:
        f.write("from a notebook")
    assert s3_site.cat_file("areas/site1/workspaces/alice/run/r.txt") == b"from a notebook"
    with fsspec.open("workspace://run/r.txt", "r") as f:
        assert f.read() == "from a notebook"
    assert fsspec.open("sites://st-a/x.txt", "rb").open().read() == b"site a in s3\n"
    fs = fsspec.filesystem("workspace")
    (tmp_path / "up.bin").write_bytes(b"\x00\x01" * 5000)
    fs.put(str(tmp_path / "up.bin"), "workspace://run/up.bin")
    fs.get("workspace://run/up.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == b"\x00\x01" * 5000
    assert sorted(fs.ls("workspace://run", detail=False)) == ["run/r.txt", "run/up.bin"]
    fsspec.filesystem("group").pipe_file("group://g1/s.txt", b"group")
    assert s3_site.cat_file("areas/site1/groups/g1/s.txt") == b"group"
    with pytest.raises(ValueError, match="'..' is not allowed"):
        fs.cat_file("workspace://../bob/x")


def test_s3_credentials_problems_are_named(s3_site, tmp_path, monkeypatch):
    doc = json.loads(os.environ["SCIREPO_FS"])
    doc["s3"]["credentials_file"] = str(tmp_path / "missing.ini")
    monkeypatch.setenv("SCIREPO_FS", json.dumps(doc))
    with pytest.raises(ValueError, match=r"S3 credentials file .*missing.ini cannot be read"):
        fsspec.filesystem("workspace")
    (tmp_path / "bad.ini").write_text("[default]\naws_access_key_id = x\n")
    doc["s3"]["credentials_file"] = str(tmp_path / "bad.ini")
    monkeypatch.setenv("SCIREPO_FS", json.dumps(doc))
    with pytest.raises(ValueError, match="lacks aws_secret_access_key"):
        fsspec.filesystem("workspace")


def test_s3_without_s3fs_says_what_to_install(s3_site, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now raises ImportError
    with pytest.raises(ValueError, match="needs the package s3fs, which this image does not"):
        fsspec.open("workspace://x").open()


def test_the_sdist_holds_the_source(tmp_path):
    """build_sdist, PEP 517's other mandatory hook: the source a wheel is built from."""
    import tarfile

    code = f"import sys, build_backend\nprint(build_backend.build_sdist({str(tmp_path)!r}))\n"
    name = subprocess.run(
        [sys.executable, "-c", code], cwd=SOURCE, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert name == "scirepo_fs-0.1.0.tar.gz"
    with tarfile.open(tmp_path / name) as tar:
        names = set(tar.getnames())
        pkg_info = tar.extractfile("scirepo_fs-0.1.0/PKG-INFO").read().decode()
    assert {
        "scirepo_fs-0.1.0/pyproject.toml",
        "scirepo_fs-0.1.0/build_backend.py",
        "scirepo_fs-0.1.0/scirepo_fs/areas.py",
    } <= names
    assert "Name: scirepo-fs" in pkg_info
