"""The data-area URLs of scirepo-fs from inside a user container, on every stack.

As the hub starts a server: a layout of areas in a temporary directory (site data owned by
root and mounted read-only, the user's workspace owned by the user and mounted
read-write), mounted at the same absolute paths, `SCIREPO_FS` made by the hub's own code
(scirepo.storage.notebook_fs) and the user dropped to by the entrypoint. A notebook-style
script writes through `workspace://`, reads it back with fsspec.open, lists `sites://`,
reads site data, is refused `..` and writing to read-only site data; in the stacks whose
lock has pandas or h5py, those open the URLs too (pandas.read_csv / to_csv, and parquet
when pyarrow is there; h5py and ObsPy through a file object from fsspec.open).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from scirepo import config
from scirepo.storage import notebook_fs
from tests.images.containers import UID

NOTEBOOK = r"""
import json
import fsspec

out = {}
with fsspec.open("workspace://results/run1.txt", "w") as f:
    f.write("written in a notebook\n")
with fsspec.open("workspace://results/run1.txt", "rt") as f:
    out["read_back"] = f.read()
out["sites"] = sorted(fsspec.filesystem("sites").ls("sites://", detail=False))
out["site_files"] = fsspec.filesystem("sites").find("sites://st-a")
with fsspec.open("sites://st-a/catalog.csv", "rt") as f:
    out["catalog"] = f.read()
out["workspace_ls"] = fsspec.filesystem("workspace").ls("results", detail=False)
try:
    fsspec.open("workspace://../bob/notes.txt").open()
    out["dotdot"] = "opened"
except ValueError as exc:
    out["dotdot"] = str(exc)
try:
    with fsspec.open("sites://st-a/mine.txt", "w") as f:
        f.write("no")
    out["site_write"] = "written"
except OSError as exc:
    out["site_write"] = type(exc).__name__ + ": " + str(exc.strerror)
try:
    fsspec.open("public://bob/x").open()
except ValueError as exc:
    out["public"] = str(exc)

try:
    import pandas
except ImportError:
    pandas = None
if pandas is not None:
    df = pandas.read_csv("sites://st-a/catalog.csv")
    df["double"] = df["amplitude"] * 2
    df.to_csv("workspace://results/catalog2.csv", index=False)
    out["pandas"] = pandas.read_csv("workspace://results/catalog2.csv").to_dict("list")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        df.to_parquet("workspace://results/catalog.parquet")
        back = pandas.read_parquet("workspace://results/catalog.parquet")
        out["parquet"] = back.to_dict("list")

try:
    import h5py
except ImportError:
    h5py = None
if h5py is not None:
    with fsspec.open("workspace://results/trace.h5", "wb") as f:
        with h5py.File(f, "w") as h5:
            h5["trace"] = list(range(10))
    with fsspec.open("workspace://results/trace.h5", "rb") as f:
        with h5py.File(f, "r") as h5:
            out["h5py"] = [int(x) for x in h5["trace"][:]]

try:
    import obspy
except ImportError:
    obspy = None
if obspy is not None:
    stream = obspy.read()  # ObsPy's example stream
    with fsspec.open("workspace://results/example.mseed", "wb") as f:
        stream.write(f, format="MSEED")
    with fsspec.open("workspace://results/example.mseed", "rb") as f:
        back = obspy.read(f)
    out["obspy"] = [len(back), int(back[0].stats.npts), str(back[0].id)]
    out["obspy_expected"] = [len(stream), int(stream[0].stats.npts), str(stream[0].id)]
print(json.dumps(out))
"""

CATALOG = "station,amplitude\nAAA,1.5\nBBB,2.0\n"


@pytest.fixture(scope="module")
def areas():
    """An area layout under a temporary root, owned as on the host, and its paths."""
    root = Path(tempfile.mkdtemp(prefix="scirepo-fs-"))
    root.chmod(0o755)
    site = {"site": {"name": "x"}, "storage": {"root": str(root)}}
    site["storage"]["sites"] = [{"name": "st-a"}, {"name": "st-b"}]
    paths = config.resolve(config.validate(site))["paths"]
    for site_dir in paths["sites"].values():
        Path(site_dir).mkdir(parents=True)
    (Path(paths["sites"]["st-a"]) / "catalog.csv").write_text(CATALOG)
    workspace = Path(paths["workspaces"]) / "alice"
    workspace.mkdir(parents=True)
    os.chown(workspace, UID, UID)
    workspace.chmod(0o700)
    yield paths
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def notebook(image, areas) -> dict:
    """The notebook-style script's findings, run as alice in a container of the image."""
    workspace = f"{areas['workspaces']}/alice"
    # A site without public folders: the script checks that public:// says so by name.
    no_public = {k: v for k, v in areas.items() if k != "public"}
    env = notebook_fs.environment(no_public, {"backend": "local"})
    opts = (
        "-e",
        f"SCIREPO_FS={env['SCIREPO_FS']}",
        "--mount",
        f"type=bind,source={areas['data']},target={areas['data']},readonly",
        "--mount",
        f"type=bind,source={workspace},target={workspace}",
    )
    out = image.run("python", "-c", NOTEBOOK, user_env=True, opts=opts).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_workspace_round_trip(notebook, areas):
    assert notebook["read_back"] == "written in a notebook\n"
    assert "results/run1.txt" in notebook["workspace_ls"]
    made = Path(areas["workspaces"]) / "alice" / "results" / "run1.txt"
    assert made.read_text() == "written in a notebook\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (UID, UID)


def test_sites_listed_and_read(notebook):
    assert notebook["sites"] == ["st-a", "st-b"]
    assert notebook["site_files"] == ["st-a/catalog.csv"]
    assert notebook["catalog"] == CATALOG


def test_refusals_are_named(notebook):
    assert "workspace://../bob/notes.txt: '..' is not allowed" in notebook["dotdot"]
    # Site data is a read-only mount: the URL changes nothing about that.
    assert notebook["site_write"].startswith(("OSError", "PermissionError")), notebook
    assert "this site has no public area" in notebook["public"]


def test_pandas_reads_and_writes_urls(notebook, locked):
    if "pandas" not in locked:
        assert "pandas" not in notebook
        return
    assert notebook["pandas"] == {
        "station": ["AAA", "BBB"],
        "amplitude": [1.5, 2.0],
        "double": [3.0, 4.0],
    }
    if "pyarrow" in locked:
        assert notebook["parquet"]["double"] == [3.0, 4.0]


def test_h5py_through_fsspec_open(notebook, locked):
    if "h5py" not in locked:
        assert "h5py" not in notebook
        return
    assert notebook["h5py"] == list(range(10))


def test_obspy_through_fsspec_open(notebook, locked):
    if "obspy" not in locked:
        assert "obspy" not in notebook
        return
    assert notebook["obspy"] == notebook["obspy_expected"]
    assert notebook["obspy"][0] == 3
