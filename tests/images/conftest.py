"""Which images the image tests run on: every stack, each test once per stack.

A test that takes the `image` fixture runs on each notebook image, so the base image's
tests are inherited by every child stack (docker-stacks' "parent tests run on children").
The images come from, first match wins:

- env SCIREPO_TEST_IMAGE: that one image (a tag or a digest reference);
- env SCIREPO_IMAGES_JSON: every stack of that images.json, at its `push_ref` (an earlier
  `scirepo images build --push-registry ...`, or CI's artifact); nothing is built;
- else: every stack of the site config (`--site`), built and pushed by `scirepo local up`
  (the `local_host` fixture), at its `push_ref` in build/images.json.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from scirepo import config as siteconfig
from scirepo import images
from tests.images.containers import Image

ENV_IMAGE = "SCIREPO_TEST_IMAGE"
ENV_IMAGES_JSON = "SCIREPO_IMAGES_JSON"
REPO = Path(__file__).resolve().parents[2]


def images_json() -> Path | None:
    value = os.environ.get(ENV_IMAGES_JSON, "")
    return Path(value) if value else None


def stack_names(config) -> list[str]:
    """The stacks to test (collection time, before anything is built)."""
    if os.environ.get(ENV_IMAGE):
        return ["env"]
    path = images_json()
    if path:
        if not path.is_file():
            raise pytest.UsageError(f"{ENV_IMAGES_JSON}={path}: no such file")
        return list(images.load_images_json(path)["stacks"])
    site = config.getoption("--site")
    if not site.exists():
        site = REPO / "site.example.yml"
    return list(siteconfig.resolve(siteconfig.load(site))["images"]["stacks"])


def pytest_generate_tests(metafunc):
    if "stack" in metafunc.fixturenames:
        names = stack_names(metafunc.config)
        metafunc.parametrize("stack", names, ids=names, scope="module")


@pytest.fixture(scope="module")
def image(request, stack) -> Image:
    """The image under test (one per stack)."""
    ref = os.environ.get(ENV_IMAGE)
    if not ref:
        if not images_json():
            request.getfixturevalue("local_host")
        ref = images.load_images_json(images_json())["stacks"][stack]["push_ref"]
    return Image(ref)


@pytest.fixture(scope="module")
def manifest(image) -> dict:
    labels = json.loads(image.inspect("{{json .Config.Labels}}")) or {}
    assert images.MANIFEST_LABEL in labels, "the image has no manifest label"
    return json.loads(labels[images.MANIFEST_LABEL])


@pytest.fixture(scope="module")
def lineage(manifest) -> list[str]:
    """The image's stack and its parents, parent first: ["base"] or ["base", "seismology"]."""
    return list(dict.fromkeys([images.PARENT_STACK, manifest["name"]]))


@pytest.fixture(scope="module")
def locked(lineage) -> dict[str, str]:
    """Pins of the image's lock, plus its parent's for a child stack."""
    pins: dict[str, str] = {}
    for name in lineage:
        lock = REPO / "images" / name / "requirements.txt"
        if lock.exists():  # a child stack may add no Python packages
            pins |= images.read_lock(lock.read_text())
    return pins


@pytest.fixture(scope="module")
def requested(lineage) -> list[str]:
    """Packages the image's requirements.in and its parent's ask for, parent's first."""
    names: list[str] = []
    for name in lineage:
        path = REPO / "images" / name / "requirements.in"
        if path.exists():
            names += images.read_requirements_in(path.read_text())
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def local_packages(lineage) -> dict[str, str]:
    """{name: version} of the packages the image installs from this repository's source
    (a directory with a pyproject.toml in the image's build context, such as
    images/base/scirepo-fs), for the image's stack and its parent."""
    found: dict[str, str] = {}
    for name in lineage:
        for pyproject in sorted((REPO / "images" / name).glob("*/pyproject.toml")):
            project = tomllib.loads(pyproject.read_text())["project"]
            found[images.normalize(project["name"])] = project["version"]
    return found
