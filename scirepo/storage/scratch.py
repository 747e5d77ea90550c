"""Cleaning the scratch area: `scirepo storage scratch-clean`.

Below paths.scratch (one folder per user, `scratch/<user>`), every file, link, FIFO or
socket whose modification, change and access times are all older than
storage.scratch.max_age_days is deleted, and so is every directory below a user's folder
that is empty afterwards and was either emptied by this run or untouched itself for as
long. The users' folders themselves stay. A systemd timer runs it every
storage.scratch.interval; `--dry-run` reports what a run would delete.

Nothing outside the scratch area is touched: the walk holds each directory open and
works relative to it (openat with O_NOFOLLOW, unlinkat), so a symbolic link is deleted as
a link and never followed, a directory swapped for a link meanwhile is not entered, and a
directory on another file system (a mount below scratch) is left whole. Each entry's times
are read again just before it is deleted: a file used meanwhile stays.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass, field

from scirepo import config as sconfig
from scirepo.config import ScirepoError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 400  # deeper trees are reported and left (each level holds a descriptor)


@dataclass
class Report:
    """What a run deleted (or would delete, with dry_run)."""

    dry_run: bool
    cutoff: float
    removed: list[dict] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    kept: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r["bytes"] for r in self.removed)

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff,
            "removed": self.removed,
            "removed_dirs": self.removed_dirs,
            "bytes": self.bytes,
            "kept": self.kept,
            "errors": self.errors,
        }

    def text(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"{verb} {r['path']} ({r['bytes']} bytes)" for r in self.removed]
        lines += [f"{verb} empty directory {d}" for d in self.removed_dirs]
        lines.append(
            f"{verb} {len(self.removed)} files ({self.bytes} bytes) and "
            f"{len(self.removed_dirs)} directories; {self.kept} entries kept"
        )
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines) + "\n"


def _old(st: os.stat_result, cutoff: float) -> bool:
    return max(st.st_mtime, st.st_ctime, st.st_atime) < cutoff


class _Cleaner:
    def __init__(self, top: str, cutoff: float, dry_run: bool) -> None:
        self.top, self.report = top, Report(dry_run=dry_run, cutoff=cutoff)
        self.cutoff, self.dry_run = cutoff, dry_run

    def run(self) -> Report:
        try:
            fd = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ScirepoError(f"scratch area {self.top}: {exc.strerror}") from None
        try:
            self.dev = os.fstat(fd).st_dev
            self._dir(fd, self.top, 0)
        finally:
            os.close(fd)
        return self.report

    def _dir(self, fd: int, path: str, depth: int) -> int:
        """Clean the directory open as `fd`; return how many entries remain in it."""
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries]
        except OSError as exc:
            self.report.errors.append(f"{path}: {exc.strerror}")
            return 1
        left = 0
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            full = f"{path}/{name}"
            if stat.S_ISDIR(st.st_mode):
                left += self._subdir(fd, name, full, st, depth + 1)
            elif _old(st, self.cutoff):
                left += self._unlink(fd, name, full)
            else:
                left += 1
        self.report.kept += left
        return left

    def _subdir(self, parent: int, name: str, full: str, st: os.stat_result, depth: int) -> int:
        if st.st_dev != self.dev:
            self.report.errors.append(f"{full}: another file system, not entered")
            return 1
        if depth > MAX_DEPTH:
            self.report.errors.append(f"{full}: deeper than {MAX_DEPTH} levels, not entered")
            return 1
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except OSError as exc:  # ELOOP: it became a link meanwhile; never followed
            self.report.errors.append(f"{full}: {exc.strerror}")
            return 1
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                return 1  # swapped meanwhile: leave it for the next run
            removed_before = len(self.report.removed) + len(self.report.removed_dirs)
            left = self._dir(fd, full, depth)
        finally:
            os.close(fd)
        emptied = len(self.report.removed) + len(self.report.removed_dirs) > removed_before
        # Users' folders (depth 1) stay; below them, a directory goes when it is empty now
        # and this run emptied it or it has been untouched itself for max_age_days (its
        # times as seen before this run opened it).
        if depth < 2 or left or not (emptied or _old(st, self.cutoff)):
            return 1
        if not self.dry_run:
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    self.report.errors.append(f"{full}: {exc.strerror}")
                return 1
        self.report.removed_dirs.append(full)
        return 0

    def _unlink(self, fd: int, name: str, full: str) -> int:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if stat.S_ISDIR(st.st_mode) or not _old(st, self.cutoff):
            return 1  # changed since the listing
        if not self.dry_run:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return 0
            except OSError as exc:
                self.report.errors.append(f"{full}: {exc.strerror}")
                return 1
        self.report.removed.append(
            {"path": full, "bytes": st.st_blocks * 512, "uid": st.st_uid, "mtime": st.st_mtime}
        )
        return 0


def clean(cfg: dict, dry_run: bool = False, now: float | None = None) -> Report:
    """Clean paths.scratch as the module docstring says; return the report."""
    days = cfg["storage"]["scratch"]["max_age_days"]
    cutoff = (time.time() if now is None else now) - days * 86400
    return _Cleaner(cfg["paths"]["scratch"], cutoff, dry_run).run()


# --------------------------------------------------------------------------- CLI


def register(actions) -> None:
    parser = actions.add_parser(
        "scratch-clean",
        help="delete files untouched for storage.scratch.max_age_days in scratch",
        description=__doc__,
    )
    parser.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_cmd_clean)


def _cmd_clean(args) -> int:
    if os.geteuid() != 0:
        raise ScirepoError("cleaning the scratch area needs root")
    cfg = sconfig.resolve(sconfig.load(sconfig.locate(args.config)))
    report = clean(cfg, dry_run=args.dry_run)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text(), end="")
    if args.json:
        print()
    return 1 if report.errors else 0
