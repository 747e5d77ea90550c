"""The tracked release list RELEASES: one `vX.Y.Z COMMIT` line per release, oldest first.
Read by the upgrade test (which release to deploy first) and checked by a unit test."""

from __future__ import annotations

import re
from pathlib import Path

RELEASES = Path(__file__).resolve().parents[1] / "RELEASES"
VERSION_RE = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def read() -> list[tuple[str, str]]:
    """(version, commit) of every release; ValueError naming a malformed line."""
    rows = []
    for n, line in enumerate(RELEASES.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not VERSION_RE.fullmatch(fields[0]):
            raise ValueError(f"RELEASES line {n}: expected 'vX.Y.Z COMMIT', got {line!r}")
        rows.append((fields[0], fields[1]))
    return rows
