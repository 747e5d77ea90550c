"""Every stack's requested packages work: each package its requirements.in (or its
parent's) asks for imports as the unprivileged user at the locked version, and a small
notebook that uses them executes (docker-stacks' import and notebook checks)."""

from __future__ import annotations

import json

import pytest

from tests.images.containers import make_home, remove_home

# Runs in the image: {distribution: {module, metadata version, __version__}} for the
# distributions in argv[1] (a JSON list). The module of a distribution comes from the
# installed metadata (packages_distributions): the one named like the distribution, else
# its first public top-level module; nothing is hard-coded per package.
IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, json, re, sys

norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
modules = {}
for mod, dists in md.packages_distributions().items():
    for dist in dists:
        modules.setdefault(norm(dist), []).append(mod)
out = {}
for dist in json.loads(sys.argv[1]):
    found = modules.get(dist, [])
    same = dist.replace("-", "_")
    mod = same if same in found else sorted(m for m in found if not m.startswith("_"))[0]
    version = getattr(importlib.import_module(mod), "__version__", None)
    out[dist] = {"module": mod, "metadata": md.version(dist), "attr": version}
print(json.dumps(out))
"""

NOTEBOOK_CELL = """\
import importlib, json
versions = {{m: getattr(importlib.import_module(m), "__version__", None) for m in {modules!r}}}
print(json.dumps(versions))
"""


@pytest.fixture(scope="module")
def home():
    path = make_home()
    yield path
    remove_home(path)


@pytest.fixture(scope="module")
def imported(image, requested, home) -> dict:
    """Import every requested package in one container, as the user the hub names."""
    out = image.run(
        "python",
        "-c",
        IMPORT_CHECK,
        json.dumps(requested),
        user_env=True,
        opts=("-v", f"{home}:/home/alice"),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_requested_packages_import_at_locked_versions(imported, requested, locked):
    assert sorted(imported) == sorted(requested)
    wrong = {
        dist: (locked[dist], got["metadata"], got["attr"])
        for dist, got in imported.items()
        if got["metadata"] != locked[dist] or got["attr"] not in (None, locked[dist])
    }
    assert not wrong, f"lock != installed != __version__: {wrong}"


def test_a_notebook_using_the_packages_executes(image, imported, home):
    modules = sorted({got["module"] for got in imported.values()})
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "versions",
                "metadata": {},
                "outputs": [],
                "source": NOTEBOOK_CELL.format(modules=modules),
            }
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (home / "check.ipynb").write_text(json.dumps(notebook))
    image.run(
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--ExecutePreprocessor.timeout=120",
        "--output",
        "executed.ipynb",
        "check.ipynb",
        user_env=True,
        opts=("-v", f"{home}:/home/alice"),
        timeout=240,
    )
    executed = json.loads((home / "executed.ipynb").read_text())
    outputs = executed["cells"][0]["outputs"]
    # nbformat stores a stream's text as a string or as a list of lines.
    text = "".join("".join(o["text"]) for o in outputs if o.get("name") == "stdout")
    assert json.loads(text) == {
        got["module"]: got["attr"] for got in imported.values() if got["module"] in modules
    }
