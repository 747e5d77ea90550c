"""The PEP 517 build backend of scirepo-fs: a pure-Python wheel from pyproject.toml.

Why not setuptools: the base image installs this package with `pip --no-index
--no-build-isolation`, and the image's venv has setuptools without `wheel` (which
setuptools before 70.1 needs to build a wheel). This backend needs only the standard
library, so the build works offline in any Python >= 3.11. It packs `scirepo_fs/*.py` and
the metadata of `[project]` (name, version, summary, dependencies, extras, entry points);
the wheel is reproducible (fixed timestamps, sorted entries).
ref: https://peps.python.org/pep-0517/ (hooks), https://packaging.python.org/en/latest/specifications/binary-distribution-format/
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "scirepo_fs"
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def _project() -> dict:
    return tomllib.loads((HERE / "pyproject.toml").read_text())["project"]


def _dist_name(project: dict) -> str:
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project['description']}",
        f"License: {project['license']}",
        f"Requires-Python: {project['requires-python']}",
    ]
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {dep} ; extra == "{extra}"' for dep in deps]
    return "\n".join(lines) + "\n"


def _entry_points(project: dict) -> str:
    out = []
    for group, entries in project.get("entry-points", {}).items():
        out.append(f"[{group}]")
        out += [f"{name} = {value}" for name, value in entries.items()]
        out.append("")
    return "\n".join(out)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings=None) -> list[str]:
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None) -> str:
    project = _project()
    dist = f"{_dist_name(project)}-{project['version']}"
    files = {
        path.relative_to(HERE).as_posix(): path.read_bytes()
        for path in sorted((HERE / PACKAGE).rglob("*.py"))
    }
    files[f"{dist}.dist-info/METADATA"] = _metadata(project).encode()
    files[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: scirepo-fs build_backend\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist}.dist-info/entry_points.txt"] = _entry_points(project).encode()
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    name = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as whl:
        for arcname, data in files.items():
            info = zipfile.ZipInfo(arcname, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
    return name


def build_sdist(sdist_directory, config_settings=None) -> str:
    project = _project()
    dist = f"{_dist_name(project)}-{project['version']}"
    members = ["pyproject.toml", "build_backend.py", "README.md"]
    members += [p.relative_to(HERE).as_posix() for p in sorted((HERE / PACKAGE).rglob("*.py"))]
    members.append("PKG-INFO")
    name = f"{dist}.tar.gz"
    with tarfile.open(Path(sdist_directory) / name, "w:gz") as tar:
        for member in members:
            data = (
                _metadata(project).encode()
                if member == "PKG-INFO"
                else (HERE / member).read_bytes()
            )
            info = tarfile.TarInfo(f"{dist}/{member}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return name
