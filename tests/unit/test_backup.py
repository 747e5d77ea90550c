"""The restic side of `scirepo backup` with Debian's restic, in a temporary directory."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from scirepo import backup

pytestmark = pytest.mark.skipif(not shutil.which("restic"), reason="restic is not installed")


def test_a_missing_repository_is_made_and_then_opened(tmp_path):
    repo = str(tmp_path / "restic")
    backup.ensure_repository(repo, "first-password")
    assert (tmp_path / "restic" / "config").exists()
    backup.ensure_repository(repo, "first-password")  # opens it; nothing changes


def test_a_repository_of_another_password_is_never_replaced(tmp_path):
    repo = str(tmp_path / "restic")
    backup.ensure_repository(repo, "first-password")
    before = sorted(p.name for p in (tmp_path / "restic").iterdir())
    with pytest.raises(backup.BackupError, match="does not open"):
        backup.ensure_repository(repo, "another-password")
    assert sorted(p.name for p in (tmp_path / "restic").iterdir()) == before


def test_regroup_maps_gids_below_the_paths_keeping_modes_and_links(tmp_path):
    """A restored tree whose files carry the old host's gid of a platform group gets the
    new host's gid: directories keep their setgid bit, links are changed, not followed."""
    old, new, other = 47990, 47991, 47992
    area = tmp_path / "area"
    (area / "sub").mkdir(parents=True)
    (area / "sub" / "f").write_text("x")
    (area / "mine").write_text("y")
    (area / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("z")
    for path in (area, area / "sub", area / "sub" / "f", area / "link", tmp_path / "outside"):
        os.lchown(path, 0, old)
    os.lchown(area / "mine", 0, other)
    os.chmod(area / "sub", 0o2775)  # noqa: S103 - the mode of a site data directory
    changed = backup.regroup([str(area), str(tmp_path / "missing")], {old: new})
    assert changed == 4
    for path in (area, area / "sub", area / "sub" / "f", area / "link"):
        assert os.lstat(path).st_gid == new, path
    assert os.lstat(area / "mine").st_gid == other
    assert os.lstat(tmp_path / "outside").st_gid == old  # behind the link: untouched
    assert stat.S_IMODE(os.lstat(area / "sub").st_mode) == 0o2775
