"""The tracked release list RELEASES, which the upgrade test deploys from."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests import releases

REPO = Path(__file__).resolve().parents[2]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_releases_are_well_formed_increasing_ancestors_of_head():
    rows = releases.read()
    assert rows, "RELEASES lists no release"
    versions = []
    for version, commit in rows:
        m = releases.VERSION_RE.fullmatch(version)
        versions.append(tuple(int(x) for x in m.groups()))
        assert re.fullmatch(r"[0-9a-f]{40}", commit), f"{version}: {commit} is not a full hash"
        assert git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, (
            f"{version}: {commit} is not an ancestor of HEAD"
        )
        tag = git("rev-parse", "--verify", "--quiet", f"refs/tags/{version}^{{commit}}")
        if tag.returncode == 0:
            assert tag.stdout.strip() == commit, f"tag {version} is not {commit}"
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
