"""`scirepo storage transfer`: move complete uploads from the upload sandbox into site data.

`<upload>/<site>/<path>` goes to `<data>/<site>/<path>` (storage/README.md). Only complete
uploads move (`storage.transfer.complete`: a marker file, or a quiet period). Per batch of
files, in this order, so that a crash at any point followed by another run leaves every
file exactly once at the destination, intact:

1. the temporary names about to be written are recorded in the catalog (`partials`);
2. each source is opened without following links (refused unless a regular file with one
   link) and copied to `.scirepo-partial-*` in its destination directory (made ahead by
   other threads, one per directory: creating a file is most of the cost of a small one),
   chunk by chunk;
   each chunk is read back from the copy and hashed, and compared with the upload's bytes
   (`verify: compare`) or checked against the upload's own SHA-256 (`verify: sha256`):
   this is what "verified" means. A source that changes meanwhile (size, mtime, ctime), or
   that someone has open for writing (a read lease cannot be taken), waits for a later run;
3. the destination file system is synced (syncfs);
4. each copy is linked to its final name, which fails rather than replace an existing
   file, the temporary name removed and the file system synced again;
5. the catalog records the batch in one transaction (and forgets its partials);
6. the sources are removed.

The next batch is opened, recorded and its temporary files made while one batch goes
through steps 3-6 (two batches at a time at the most; batches shrink to fit the limit of
open files).

A run first removes the partials of a crashed run. A destination that already exists is
hashed: identical to the upload, it is recorded (if missing) and the upload removed, which
is how a crash after step 4 or 5 completes; different, it is a conflict, reported and left.

One transfer at a time: an exclusive flock on `transfer.lock` next to the catalog. Exit
codes: 0 done (uploads still incomplete are normal), 1 something needs the operator
(conflicts, refused files, errors), 2 bad config or usage, 75 another transfer is running.

SCIREPO_TRANSFER_CRASH_AFTER=STEP[:N] kills the process with SIGKILL at a step (tests):
`partial` (half of the Nth file written), `copied`, `linked`, `placed`, `removed` (after
the Nth file's step), `synced`, `recorded` (after the Nth batch's step).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import fnmatch
import functools
import grp
import hashlib
import json
import logging
import math
import os
import pwd
import resource
import signal
import stat
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from scirepo import config as sconfig
from scirepo.config import ScirepoError
from scirepo.storage.catalog import DEFAULT_PATH, Catalog, escape, iso_ns, now

log = logging.getLogger("scirepo.storage")

EXIT_OK, EXIT_ATTENTION, EXIT_BUSY = 0, 1, 75
CRASH_ENV = "SCIREPO_TRANSFER_CRASH_AFTER"
CRASH_STEPS = ("partial", "copied", "synced", "linked", "placed", "recorded", "removed")
PARTIAL_PREFIX = ".scirepo-partial-"

CHUNK = 8 << 20  # read size (buffers are reused: no allocation per file)
LARGE = 64 << 20  # from this size, hashing runs in other threads
KERNEL_COPY = True  # copy with copy_file_range where the file systems allow it
BATCH_FILES = 1000  # files per batch: two syncfs and two catalog transactions each
BATCH_BYTES = 1 << 30
CREATE_LANES = 2  # threads creating the temporary files (in different directories)

# copy_file_range errors that mean "not here": copy through user space instead.
_NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
# The configured areas themselves (upload, data/<site>) may be reached through symbolic
# links the operator made; everything below them is opened with O_NOFOLLOW.
_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that raced in must not hang. O_NOATIME: reading is no access.
_SRC = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_EVERYONE = -1  # in a set of uids whose uploads are complete: a root-owned marker

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing this range to disk now (SYNC_FILE_RANGE_WRITE, no
    waiting), so that the disk works while later chunks are copied and syncfs finds
    little left to do. Only a hint: errors are reported by syncfs."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, 2)


_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]  # fmt: skip
_RENAME_NOREPLACE = 1


def _rename_noreplace(dir_fd: int, old: str, new: str) -> bool:
    """Rename `old` to `new` in directory `dir_fd` unless `new` exists (FileExistsError).
    False if the C library or the file system cannot (then use link and unlink)."""
    if _renameat2 is None:
        return False
    res = _renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), _RENAME_NOREPLACE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), new)


def _syncfs(fd: int) -> None:
    """Flush the file system holding `fd` (data and metadata); raise OSError on failure."""
    fn = getattr(_libc, "syncfs", None)
    if fn is None:
        os.sync()
        return
    if fn(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


class TransferBusy(ScirepoError):
    """Another transfer holds the lock."""


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """What a run did. Paths are `<site>/<path>`, escaped (scirepo.storage.catalog.escape)."""

    dry_run: bool = False
    mode: str = "marker"
    started: str = field(default_factory=now)
    finished: str = ""
    seconds: float = 0.0
    moved: list[dict] = field(default_factory=list)
    waiting: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)
    # Seconds per phase: open, copy (with verification), sync, place, compare (existing
    # destinations), record, remove; free is the closing of removed uploads (which frees
    # their blocks) in a second thread, overlapping the others, and wait the wait for it
    # at the end. The rest of `seconds` is the scan.
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, path: str, reason: str, **extra) -> None:
        getattr(self, kind).append({"path": path, "reason": reason, **extra})

    @property
    def bytes(self) -> int:
        return sum(m["size"] for m in self.moved)

    def exit_code(self) -> int:
        return EXIT_ATTENTION if (self.conflicts or self.refused or self.errors) else EXIT_OK

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "mode": self.mode,
            "started": self.started,
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
            "counts": {k: len(getattr(self, k)) for k in self._KINDS},
            "bytes": self.bytes,
            "exit_code": self.exit_code(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **{k: getattr(self, k) for k in self._KINDS},
        }

    _KINDS = ("moved", "waiting", "conflicts", "refused", "errors", "ignored")

    def text(self, verbose: bool = False) -> str:
        verb = "would move" if self.dry_run else "moved"
        lines = [
            f"transfer{' (dry run)' if self.dry_run else ''}: {len(self.moved)} {verb} "
            f"({self.bytes} bytes), {len(self.waiting)} waiting, {len(self.conflicts)} "
            f"conflict(s), {len(self.refused)} refused, {len(self.errors)} error(s), "
            f"{len(self.ignored)} ignored, {self.seconds:.1f} s"
        ]
        if verbose:
            for m in self.moved:
                note = " (was already in place)" if m.get("recovered") else ""
                lines.append(f"{verb:<9} {m['path']}  {m['size']} bytes  {m['sha256']}{note}")
            lines += [f"waiting   {w['path']}: {w['reason']}" for w in self.waiting]
            lines += [f"ignored   {w['path']}: {w['reason']}" for w in self.ignored]
            if self.timings:
                lines.append(
                    "seconds   " + ", ".join(f"{k} {v:.2f}" for k, v in self.timings.items())
                )
        for kind, label in (("conflicts", "conflict"), ("refused", "refused"), ("errors", "error")):
            for item in getattr(self, kind):
                lines.append(f"{label:<9} {item['path']}: {item['reason']}; left in the sandbox")
        return "\n".join(lines)


# --------------------------------------------------------------------------- items


@dataclass
class _Item:
    """One upload being moved; `dir` and `name` are str with surrogateescape."""

    site: str
    dir: tuple[str, ...]
    name: str
    fd: int = -1
    st: os.stat_result | None = None
    dst_dir: int = -1
    temp: str = ""
    tmp_fd: int = -1
    sha256: str = ""
    recovered: bool = False
    allowed: frozenset[int] = frozenset()  # uids with a marker above (marker mode)

    @functools.cached_property
    def rel(self) -> bytes:
        return b"/".join(os.fsencode(p) for p in (*self.dir, self.name))

    @functools.cached_property
    def shown(self) -> str:
        return f"{self.site}/{escape(self.rel)}"

    def close(self) -> None:
        for attr in ("fd", "tmp_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)


@dataclass
class _Batch:
    """Uploads moved together: two syncfs and two catalog transactions for all."""

    items: list[_Item]
    src_dirs: _Dirs
    dst_dirs: _Dirs
    fresh: list[_Item] = field(default_factory=list)  # to copy
    existing: list[_Item] = field(default_factory=list)  # a file is at the destination
    rows: list[tuple] = field(default_factory=list)  # their partials in the catalog
    made: list = field(default_factory=list)  # futures of the temporary files (fresh)


def _chunks(items: Iterator[_Item], files: int) -> Iterator[list[_Item]]:
    """`items` in batches of `files` files or BATCH_BYTES bytes."""
    batch: list[_Item] = []
    size = 0
    for item in items:
        batch.append(item)
        size += item.st.st_size
        if len(batch) >= files or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Dirs:
    """Directory descriptors below a root, opened one component at a time without
    following symbolic links; with `create`, missing ones are made (owner, mode)."""

    def __init__(self, root_fd: int, create=None) -> None:
        self.root = root_fd
        self.create = create  # callable(parent_fd, name) or None
        self.fds: dict[tuple[str, ...], int] = {(): root_fd}

    def get(self, parts: tuple[str, ...]) -> int | None:
        """The fd of `parts`; None if missing (and not creating). OSError if a component
        is not a directory (ENOTDIR, ELOOP)."""
        if parts in self.fds:
            return self.fds[parts]
        parent = self.get(parts[:-1])
        if parent is None:
            return None
        try:
            fd = os.open(parts[-1], _DIR, dir_fd=parent)
        except FileNotFoundError:
            if self.create is None:
                return None
            self.create(parent, parts[-1])
            fd = os.open(parts[-1], _DIR, dir_fd=parent)
        self.fds[parts] = fd
        return fd

    def close(self) -> None:
        for parts, fd in self.fds.items():
            if parts:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds = {(): self.root}


# --------------------------------------------------------------------------- transfer


class Transfer:
    """One run over the sandbox. `run()` returns the Report."""

    def __init__(
        self,
        cfg: dict,
        catalog_path: str,
        *,
        sites: list[str] | None = None,
        dry_run: bool = False,
    ) -> None:
        opts = cfg["storage"]["transfer"]
        self.mode = opts["complete"]
        self.marker = opts["marker"]
        self.quiet = opts["quiet_seconds"]
        self.verify = opts["verify"]
        self.ignore = list(opts["ignore"])
        self.file_mode = int(opts["file_mode"], 8)
        self.dir_mode = int(opts["dir_mode"], 8)
        self.upload = cfg["paths"]["upload"]
        self.all_sites = dict(cfg["paths"]["sites"])
        unknown = sorted(set(sites or ()) - set(self.all_sites))
        if unknown:
            known = ", ".join(sorted(self.all_sites))
            raise ScirepoError(f"--site: unknown site(s) {', '.join(unknown)} (known: {known})")
        self.sites = {s: p for s, p in self.all_sites.items() if not sites or s in sites}
        self.catalog_path = catalog_path
        self.dry_run = dry_run
        self.root = os.geteuid() == 0
        self.data_gid = self._gid(cfg["storage"]["data_managers_group"], warn=not dry_run)
        self.users_gid = self._gid(cfg["users"]["group"], warn=False)
        self.report = Report(dry_run=dry_run, mode=self.mode)
        self.catalog: Catalog | None = None
        self._names: dict[int, str] = {}
        self._crash = self._crash_from_env()
        self._counts: dict[str, int] = {}
        self._tag = f"{os.getpid()}-{time.time_ns() // 1_000_000}"
        self._serial = 0
        self._hasher: ThreadPoolExecutor | None = None
        self._hasher2: ThreadPoolExecutor | None = None
        self._kernel_copy = KERNEL_COPY
        self._noreplace = True  # renameat2(RENAME_NOREPLACE) works here, until it does not
        self._closer: ThreadPoolExecutor | None = None
        self._creators: list[ThreadPoolExecutor] = []
        self._batch_files = BATCH_FILES

    # ------------------------------------------------------------------- helpers

    @staticmethod
    def _gid(group: str, warn: bool) -> int:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            if warn:
                log.warning("group %s does not exist: new site data is group root", group)
            return 0

    def _uploader(self, uid: int) -> str:
        if uid not in self._names:
            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = str(uid)
        return self._names[uid]

    @staticmethod
    def _crash_from_env() -> tuple[str, int] | None:
        spec = os.environ.get(CRASH_ENV, "")
        if not spec:
            return None
        step, _, nth = spec.partition(":")
        if step not in CRASH_STEPS or (nth and not nth.isdigit()):
            raise ScirepoError(f"{CRASH_ENV}={spec!r}: want STEP[:N], STEP one of {CRASH_STEPS}")
        return step, int(nth or 1)

    @contextlib.contextmanager
    def _timed(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings = self.report.timings
            timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0

    def _close_removed(self, fds: list[int]) -> None:
        with self._timed("free"):
            for fd in fds:
                os.close(fd)

    def _step(self, step: str) -> None:
        """Die by SIGKILL if `step` is the crash point of the test hook."""
        if self._armed(step):
            os.kill(os.getpid(), signal.SIGKILL)

    def _armed(self, step: str) -> bool:
        """Count `step`; whether the test hook wants the process killed at it now."""
        if self._crash is None or self._crash[0] != step:
            return False
        self._counts[step] = self._counts.get(step, 0) + 1
        return self._counts[step] == self._crash[1]

    def _mkdir(self, parent: int, name: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR, dir_fd=parent)
        try:
            self._own(fd, self.dir_mode)
        finally:
            os.close(fd)

    def _own(self, fd: int, mode: int) -> None:
        if self.root:
            os.fchown(fd, 0, self.data_gid)
        os.fchmod(fd, mode)

    def _ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.ignore)

    def _incomplete(self, st: os.stat_result, allowed: frozenset[int], clock: float):
        """None if the upload `st` counts as complete, else why not."""
        if self.mode == "quiet":
            age = clock - max(st.st_mtime, st.st_ctime)
            if age >= self.quiet:
                return None
            return f"changed {max(age, 0):.0f} s ago, quiet period {self.quiet} s"
        if _EVERYONE in allowed or st.st_uid in allowed:
            return None
        return f"no {escape(self.marker)} of its owner in its directory or above"

    # ------------------------------------------------------------------- run

    def run(self) -> Report:
        t0 = time.monotonic()
        with contextlib.suppress(ValueError):  # not the main thread: leases still work
            # A lease break is signalled with SIGIO, whose default action is to terminate.
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 8192:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
        # Two batches are open at a time, two descriptors per file: fit the limit.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            self._batch_files = min(BATCH_FILES, max(16, (soft - 256) // 4))
        try:
            up = os.open(self.upload, _ROOT)
        except FileNotFoundError:
            log.warning("no upload sandbox at %s: nothing to transfer", self.upload)
            return self._finish(t0)
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256-copy")
        self._hasher2 = ThreadPoolExecutor(1, thread_name_prefix="sha256-upload")
        # Closing the last descriptor of a removed upload frees its blocks, the slow part
        # of a removal: a second thread does it while the next files are copied.
        self._closer = ThreadPoolExecutor(1, thread_name_prefix="close")
        # Creating a file is most of the cost of copying a small one: threads create the
        # temporary files ahead of the copy, each in its own directories (creations in
        # one directory take turns).
        self._creators = [
            ThreadPoolExecutor(1, thread_name_prefix=f"create-{i}") for i in range(CREATE_LANES)
        ]
        try:
            if not self.dry_run:
                self.catalog = Catalog(self.catalog_path)
                self._recover()
            self._scan_top(up)
            for site in sorted(self.sites):
                self._site(up, site)
            with self._timed("wait"):  # for the closing thread
                self._closer.shutdown()
        finally:
            os.close(up)
            self._hasher.shutdown()
            self._hasher2.shutdown()
            self._closer.shutdown()
            for pool in self._creators:
                pool.shutdown()
            if self.catalog:
                self.catalog.close()
        return self._finish(t0)

    def _finish(self, t0: float) -> Report:
        self.report.finished = now()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _scan_top(self, up: int) -> None:
        """Report what is not in a configured site's directory; make missing site dirs."""
        with os.scandir(up) as it:
            entries = {e.name: e for e in it}
        for name, entry in sorted(entries.items()):
            if name in self.all_sites:
                continue
            kind = "directory" if entry.is_dir(follow_symlinks=False) else "file"
            self.report.add(
                "refused",
                escape(name),
                f"a {kind} outside the site directories ({', '.join(sorted(self.all_sites))})",
            )
        for site in self.sites:
            if site not in entries and not self.dry_run:
                # The site's drop directory, as the sandbox itself: root:<users.group>,
                # sticky, so users add files and delete only their own.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(site, 0o700, dir_fd=up)
                fd = os.open(site, _DIR, dir_fd=up)
                try:
                    if self.root:
                        os.fchown(fd, 0, self.users_gid)
                    os.fchmod(fd, 0o1770)
                finally:
                    os.close(fd)

    # ------------------------------------------------------------------- recovery

    def _recover(self) -> None:
        """Remove the temporary files of an interrupted run (recorded before creation)."""
        rows = self.catalog.partials()
        if not rows:
            return
        for row in rows:
            self._remove_partial(row["site"], bytes(row["dir"]), row["name"])
        with self.catalog.transaction() as db:
            Catalog.drop_partials(db, [(r["site"], bytes(r["dir"]), r["name"]) for r in rows])

    def _remove_partial(self, site: str, directory: bytes, name: str) -> None:
        where = f"{site}/{escape((directory + b'/' + os.fsencode(name)).lstrip(b'/'))}"
        if site not in self.all_sites:
            return
        try:
            root = os.open(self.all_sites[site], _ROOT)
        except OSError:
            return
        dirs = _Dirs(root)
        try:
            fd = dirs.get(tuple(os.fsdecode(p) for p in directory.split(b"/") if p))
            if fd is not None:
                os.unlink(name, dir_fd=fd)
                log.info("removed %s, left by an interrupted transfer", where)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a directory replaced by something else: leave it
            log.warning("cannot remove %s, left by an interrupted transfer: %s", where, exc)
        finally:
            dirs.close()
            os.close(root)

    # ------------------------------------------------------------------- one site

    def _site(self, up: int, site: str) -> None:
        try:
            src_root = os.open(site, _DIR, dir_fd=up)
        except FileNotFoundError:
            return  # dry run: the drop directory is not there yet
        except OSError as exc:
            self.report.add("refused", escape(site), f"cannot open: {exc.strerror}")
            return
        dst_root = -1
        try:
            if self.dry_run:
                with contextlib.suppress(FileNotFoundError):
                    dst_root = os.open(self.sites[site], _ROOT)
            else:
                if not os.path.isdir(self.sites[site]):
                    parent_path, base = os.path.split(self.sites[site])
                    os.makedirs(parent_path, exist_ok=True)
                    parent = os.open(parent_path, _ROOT)
                    try:
                        self._mkdir(parent, base)
                    finally:
                        os.close(parent)
                dst_root = os.open(self.sites[site], _ROOT)
            touched: set[tuple[str, ...]] = set()
            chunks = _chunks(
                self._scan(site, src_root, (), frozenset(), touched), self._batch_files
            )

            def start_next() -> _Batch | None:
                items = next(chunks, None)
                return self._start(src_root, dst_root, items) if items else None

            # Each batch's files are created ahead while the one before it is synced,
            # placed, recorded and removed: two batches at a time at the most.
            batch = start_next()
            while batch is not None:
                batch = self._complete(batch, touched, start_next)
            if not self.dry_run:
                self._tidy(src_root, touched)
        finally:
            os.close(src_root)
            if dst_root >= 0:
                os.close(dst_root)

    def _scan(
        self,
        site: str,
        fd: int,
        rel: tuple[str, ...],
        allowed: frozenset[int],
        touched: set,
    ) -> Iterator[_Item]:
        """Complete regular files under directory `fd`, reporting everything else."""
        clock = time.time()
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        marker = next((e for e in entries if e.name == self.marker), None)
        if marker is not None and marker.is_file(follow_symlinks=False):
            if self.mode == "marker":
                uid = marker.stat(follow_symlinks=False).st_uid
                allowed = allowed | {_EVERYONE if uid == 0 else uid}
            touched.add(rel)  # consumed (removed) once the directory is empty

        def shown() -> str:
            return f"{site}/{escape(os.fsencode('/'.join((*rel, name))))}"

        for entry in entries:
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry is marker and stat.S_ISREG(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                if len(rel) >= 200:
                    self.report.add("refused", shown(), "directory nested too deep (200 levels)")
                    continue
                try:
                    sub = os.open(name, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # ELOOP: replaced by a link since listed
                    self.report.add("refused", shown(), f"cannot open directory: {exc.strerror}")
                    continue
                try:
                    if os.path.samestat(st, os.fstat(sub)):
                        yield from self._scan(site, sub, (*rel, name), allowed, touched)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                if name.startswith(PARTIAL_PREFIX) or self._ignored(name):
                    self.report.add("ignored", shown(), "name matches storage.transfer.ignore")
                elif st.st_nlink > 1:
                    self.report.add("refused", shown(), _HARDLINK.format(st.st_nlink))
                elif reason := self._incomplete(st, allowed, clock):
                    self.report.add("waiting", shown(), reason)
                else:
                    yield _Item(site, rel, name, st=st, allowed=allowed)
            else:
                self.report.add("refused", shown(), _kind(st.st_mode))

    # ------------------------------------------------------------------- one batch

    def _start(self, src_root: int, dst_root: int, items: list[_Item]) -> _Batch:
        """Open the uploads of a batch, find their destinations, record the temporary
        names as partials and start creating them (the dry run only reports)."""
        b = _Batch(
            items,
            _Dirs(src_root),
            _Dirs(dst_root if dst_root >= 0 else -1, None if self.dry_run else self._mkdir),
        )
        try:
            with self._timed("open"):
                ready = [it for it in items if self._open(it, b.src_dirs, b.dst_dirs)]
            b.fresh = [it for it in ready if it.temp]
            b.existing = [it for it in ready if not it.temp]
            if self.dry_run:
                for it in b.fresh:
                    self._moved(it, it.st.st_size, "")
                for it in b.existing:
                    self._existing(it)
                b.fresh, b.existing = [], []
            elif b.fresh:
                b.rows = [(it.site, b"/".join(map(os.fsencode, it.dir)), it.temp)
                          for it in b.fresh]  # fmt: skip
                with self._timed("record"), self.catalog.transaction() as db:
                    Catalog.add_partials(db, b.rows)
                b.made = self._create_ahead(b.fresh)
        except BaseException:
            self._close_batch(b)
            raise
        return b

    def _complete(self, b: _Batch, touched: set, start_next) -> _Batch | None:
        """Copy, sync, place, record and remove batch `b`; `start_next()` starts the next
        batch once this one's copies are made. Returns that next batch."""
        nxt = None
        try:
            copied, placed = [], []
            if b.fresh:
                with self._timed("copy"):
                    try:
                        copied = [it for it, f in zip(b.fresh, b.made, strict=True)
                                  if self._copy(it, f)]  # fmt: skip
                    finally:
                        self._settle(b.fresh, b.made)
                        b.made = []
            nxt = start_next()
            if copied:
                devices = {os.fstat(it.dst_dir).st_dev: it.dst_dir for it in copied}
                with self._timed("sync"):
                    for fd in devices.values():
                        _syncfs(fd)
                self._step("synced")
                with self._timed("place"):
                    placed = [it for it in copied if self._place(it, b.existing)]
                with self._timed("sync"):
                    for fd in devices.values():
                        _syncfs(fd)
            for it in b.fresh:  # copies that failed, or lost the race for their name
                if it.temp:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(it.temp, dir_fd=it.dst_dir)
                    it.temp = ""
            with self._timed("compare"):
                recovered = [it for it in b.existing if self._existing(it)]
            done = placed + recovered
            if done or b.rows:
                # Partials are forgotten only now that none of them exists any more.
                with self._timed("record"), self.catalog.transaction() as db:
                    Catalog.record(db, [self._entry(it) for it in done
                                        if not (it.recovered and self._cataloged(it))])  # fmt: skip
                    Catalog.drop_partials(db, b.rows)
                self._step("recorded")
            removed = []
            with self._timed("remove"):
                for it in done:
                    if self._remove_source(it, b.src_dirs):
                        removed.append(it.fd)
                        it.fd = -1
                    touched.add(it.dir)
                    self._step("removed")
            self._closer.submit(self._close_removed, removed)
        except BaseException:
            if nxt is not None:
                self._close_batch(nxt)
            raise
        finally:
            self._close_batch(b)
        return nxt

    def _close_batch(self, b: _Batch) -> None:
        """Close what batch `b` holds open; after an exception, remove its temporary
        files (still listed as partials: the next run checks them too)."""
        if b.made:
            self._settle(b.fresh, b.made)
            b.made = []
        for it in b.items:
            it.close()
            if it.temp and it.dst_dir >= 0 and not self.dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(it.temp, dir_fd=it.dst_dir)
        b.src_dirs.close()
        b.dst_dirs.close()

    def _open(self, it: _Item, src_dirs: _Dirs, dst_dirs: _Dirs) -> bool:
        """Open the upload and check it again on the open file; find its destination."""
        try:
            src_dir = src_dirs.get(it.dir)
            if src_dir is None:
                return False
            try:
                fd = os.open(it.name, _SRC | os.O_NOATIME, dir_fd=src_dir)
            except PermissionError:  # O_NOATIME needs the owner or CAP_FOWNER
                fd = os.open(it.name, _SRC, dir_fd=src_dir)
        except FileNotFoundError:
            return False  # gone since listed
        except OSError as exc:
            reason = "symbolic link" if exc.errno == errno.ELOOP else f"cannot open: {exc.strerror}"
            self.report.add("refused" if exc.errno == errno.ELOOP else "errors", it.shown, reason)
            return False
        it.fd = fd
        st = os.fstat(fd)
        # Listed and opened may be two different files: decide on the one that is open.
        if not stat.S_ISREG(st.st_mode):
            self.report.add("refused", it.shown, _kind(st.st_mode))
            return False
        if st.st_nlink > 1:
            self.report.add("refused", it.shown, _HARDLINK.format(st.st_nlink))
            return False
        reason = self._incomplete(st, it.allowed, time.time())
        if reason:
            self.report.add("waiting", it.shown, reason)
            return False
        try:
            # A read lease is refused while anyone has the file open for writing, and
            # holds off new writers (their open waits) until we close it.
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                self.report.add("waiting", it.shown, "open for writing")
                return False
            # EINVAL and the like: the file system has no leases; the stat check remains.
        it.st = st
        try:
            dst_dir = dst_dirs.get(it.dir) if dst_dirs.root >= 0 else None
        except OSError as exc:
            self.report.add(
                "conflicts", it.shown, f"a parent at the destination is not a directory "
                f"({exc.strerror})",
            )  # fmt: skip
            return False
        if dst_dir is None:  # dry run, destination directory still to be made
            it.temp = "(new)"
            return True
        it.dst_dir = dst_dir
        try:
            os.stat(it.name, dir_fd=dst_dir, follow_symlinks=False)
        except FileNotFoundError:
            self._serial += 1
            it.temp = f"{PARTIAL_PREFIX}{self._tag}-{self._serial}"
        return True

    def _create_ahead(self, items: list[_Item]) -> list:
        """Start creating the temporary files of `items`: a future per item, of its
        descriptor. Each directory's files go to one creating thread, in turn."""
        lanes: dict[tuple[str, ...], ThreadPoolExecutor] = {}
        pools = self._creators
        return [
            lanes.setdefault(it.dir, pools[len(lanes) % len(pools)]).submit(self._create_temp, it)
            for it in items
        ]

    @staticmethod
    def _create_temp(it: _Item) -> int:
        """Create the temporary file of `it` (recorded as a partial beforehand)."""
        return os.open(
            it.temp,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=it.dst_dir,
        )

    @staticmethod
    def _settle(items: list[_Item], made: list) -> None:
        """Wait for the creations still running; keep every descriptor they opened on
        its item, to be closed (and the file removed) with it."""
        for it, f in zip(items, made, strict=True):
            f.cancel()
            if not f.cancelled() and f.exception() is None and it.tmp_fd < 0:
                it.tmp_fd = f.result()

    def _copy(self, it: _Item, made) -> bool:
        """Copy the upload to its temporary name (`made`: the future of its creation):
        hash what is read, and read every chunk back from the destination to verify it
        (`storage.transfer.verify`)."""
        try:
            tmp = it.tmp_fd = made.result()
            parallel = it.st.st_size >= LARGE
            it.sha256, size, problem = self._copy_verified(
                it.fd, tmp, it.st.st_size, parallel, self._armed("partial")
            )
            if problem:
                self.report.add("errors", it.shown, f"verification failed: {problem}")
                return False
            if size != it.st.st_size or _changed(it.st, os.fstat(it.fd)):
                self.report.add("waiting", it.shown, "changed while being copied")
                return False
            self._own(tmp, self.file_mode)
            os.utime(tmp, ns=(it.st.st_atime_ns, it.st.st_mtime_ns))
        except OSError as exc:
            self.report.add("errors", it.shown, f"copy failed: {exc.strerror or exc}")
            return False
        self._step("copied")
        return True

    def _copy_verified(
        self, src: int, dst: int, size: int, parallel: bool, crash: bool
    ) -> tuple[str, int, str | None]:
        """(SHA-256, size, problem or None) of copying `size` bytes of `src` to `dst`,
        chunk by chunk (a source that grew is caught by the caller's stat check).

        Each chunk is copied in the kernel (copy_file_range; read and write where the file
        systems cannot), then the destination chunk is read back and hashed: the SHA-256
        is that of the bytes at the destination. The source chunk is read too and either
        compared byte for byte with the destination (verify: compare) or hashed on its own
        (verify: sha256), the two SHA-256 to agree. With `parallel` (large files) the
        hashing runs in two more threads, a chunk behind (SHA-256 releases the GIL).
        """
        h_dst = hashlib.sha256()
        h_src = hashlib.sha256() if self.verify == "sha256" else None
        bufs, backs = self._bufs()
        pending: list[list] = [[], []]  # per buffer pair: hashing still reading it
        same = True
        offset = i = 0
        kernel_copy = self._kernel_copy and not crash
        try:
            while offset < size:
                k = i & 1
                for f in pending[k]:
                    f.result()  # the buffers are free again
                pending[k] = []
                buf, back = bufs[k], backs[k]
                if kernel_copy:
                    try:
                        n = os.copy_file_range(src, dst, min(CHUNK, size - offset), offset, offset)
                    except OSError as exc:
                        if offset or exc.errno not in _NO_KERNEL_COPY:
                            raise
                        self._kernel_copy = kernel_copy = False  # e.g. across file systems
                        continue
                    if n:
                        _pread_exact(src, buf, n, offset)
                else:
                    n = os.preadv(src, [memoryview(buf)[: min(CHUNK, size - offset)]], offset)
                    if n and crash:
                        os.pwrite(dst, memoryview(buf)[: n // 2], offset)
                        os.kill(os.getpid(), signal.SIGKILL)
                    if n:
                        _pwrite_all(dst, memoryview(buf)[:n], offset)
                if not n:
                    break
                _pread_exact(dst, back, n, offset)
                if offset >= 2 * CHUNK:  # two chunks behind: never waits for a busy page
                    _start_writeback(dst, offset - 2 * CHUNK, CHUNK)
                for h, data, pool in ((h_dst, back, self._hasher), (h_src, buf, self._hasher2)):
                    if h is not None:
                        if parallel:
                            pending[k].append(pool.submit(h.update, memoryview(data)[:n]))
                        else:
                            h.update(memoryview(data)[:n])
                if h_src is None and same:  # bytearray == bytearray is a memcmp
                    same = buf == back if n == CHUNK else buf[:n] == back[:n]
                offset += n
                i += 1
        finally:
            for f in pending[0] + pending[1]:
                f.result()
        sha = h_dst.hexdigest()
        if h_src is not None and h_src.hexdigest() != sha:
            return sha, offset, f"the copy hashes as {sha}, the upload as {h_src.hexdigest()}"
        if not same:
            return sha, offset, "the copy reads back other bytes than the upload"
        return sha, offset, None

    def _bufs(self) -> tuple[list[bytearray], list[bytearray]]:
        """Two read buffers and two read-back buffers, made once (none per file)."""
        if not hasattr(self, "_buffers"):
            self._buffers = ([bytearray(CHUNK) for _ in "ab"], [bytearray(CHUNK) for _ in "ab"])
        return self._buffers

    def _place(self, it: _Item, existing: list[_Item]) -> bool:
        """Give the verified copy its name; never replaces a file that appeared meanwhile:
        renameat2(RENAME_NOREPLACE), or where the file system lacks it link(2), which
        fails on an existing name, and unlink of the temporary name."""
        try:
            if self._noreplace and _rename_noreplace(it.dst_dir, it.temp, it.name):
                it.temp = ""
                self._step("linked")
                self._step("placed")
                return True
            self._noreplace = False
            os.link(it.temp, it.name, src_dir_fd=it.dst_dir, dst_dir_fd=it.dst_dir,
                    follow_symlinks=False)  # fmt: skip
        except FileExistsError:
            existing.append(it)  # compared with the upload like any existing file
            return False
        except OSError as exc:
            self.report.add("errors", it.shown, f"cannot put into place: {exc.strerror}")
            return False
        self._step("linked")
        os.unlink(it.temp, dir_fd=it.dst_dir)
        it.temp = ""
        self._step("placed")
        return True

    def _existing(self, it: _Item) -> bool:
        """A file is already at the destination: the same bytes complete an interrupted
        transfer (True); other bytes are a conflict."""
        if it.dst_dir < 0:
            self._moved(it, it.st.st_size, "")
            return False
        try:
            dfd = os.open(it.name, _SRC, dir_fd=it.dst_dir)
        except OSError as exc:
            what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            self.report.add("conflicts", it.shown, f"the destination is {what}")
            return False
        try:
            dst_st = os.fstat(dfd)
            if not stat.S_ISREG(dst_st.st_mode):
                what = _kind(dst_st.st_mode)
                self.report.add("conflicts", it.shown, f"the destination is a {what}")
                return False
            buf = self._bufs()[1][0]
            src_sha, src_size = _hash_fd(it.fd, buf)
            dst_sha, _ = _hash_fd(dfd, buf)
        except OSError as exc:
            self.report.add("errors", it.shown, f"cannot compare: {exc.strerror}")
            return False
        finally:
            os.close(dfd)
        if _changed(it.st, os.fstat(it.fd)) or src_size != it.st.st_size:
            self.report.add("waiting", it.shown, "changed while being read")
            return False
        if src_sha != dst_sha:
            self.report.add(
                "conflicts", it.shown,
                f"a different file is at the destination (upload {src_sha[:16]}..., site "
                f"data {dst_sha[:16]}...)",
                upload_sha256=src_sha, destination_sha256=dst_sha,
            )  # fmt: skip
            return False
        it.sha256 = src_sha
        it.recovered = True
        if self.dry_run:
            self._moved(it, src_size, src_sha)
        return True

    def _cataloged(self, it: _Item) -> bool:
        row = self.catalog.get(it.site, it.rel)
        return row is not None and row["sha256"] == it.sha256 and row["size"] == it.st.st_size

    def _entry(self, it: _Item) -> dict:
        rel = it.rel
        return {
            "site": it.site,
            "path": rel,
            "path_text": escape(rel),
            "size": it.st.st_size,
            "sha256": it.sha256,
            "uploader": self._uploader(it.st.st_uid),
            "uploader_uid": it.st.st_uid,
            "mtime": iso_ns(it.st.st_mtime_ns),
            "transferred": now(),
            "how": "found in place" if it.recovered else "copied",
        }

    def _moved(self, it: _Item, size: int, sha: str) -> None:
        self.report.moved.append({
            "path": it.shown, "site": it.site, "size": size, "sha256": sha,
            "uploader": self._uploader(it.st.st_uid), "recovered": it.recovered,
        })  # fmt: skip

    def _remove_source(self, it: _Item, src_dirs: _Dirs) -> bool:
        """Remove the upload, if the name still is the file that was copied (its owner may
        have replaced it meanwhile: then the new file stays, for a later run)."""
        self._moved(it, it.st.st_size, it.sha256)
        src_dir = src_dirs.get(it.dir)
        try:
            now_st = os.stat(it.name, dir_fd=src_dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not os.path.samestat(now_st, it.st):
            log.warning("%s was replaced during the transfer: the new file stays", it.shown)
            return False
        os.unlink(it.name, dir_fd=src_dir)
        return True

    # ------------------------------------------------------------------- tidy up

    def _tidy(self, src_root: int, touched: set[tuple[str, ...]]) -> None:
        """Remove markers and directories emptied by this run, deepest first."""
        todo = set(touched)
        dirs = _Dirs(src_root)
        try:
            while todo:
                rel = max(todo, key=len)
                todo.discard(rel)
                if self._tidy_one(dirs, rel) and rel:
                    todo.add(rel[:-1])
        finally:
            dirs.close()

    def _tidy_one(self, dirs: _Dirs, rel: tuple[str, ...]) -> bool:
        try:
            fd = dirs.get(rel)
            if fd is None:
                return False
            with os.scandir(fd) as it:
                entries = list(it)
            if any(e.name != self.marker or not e.is_file(follow_symlinks=False) for e in entries):
                return False
            if entries:
                os.unlink(self.marker, dir_fd=fd)
            if not rel:
                return False
            parent = dirs.get(rel[:-1])
            os.close(dirs.fds.pop(rel))
            os.rmdir(rel[-1], dir_fd=parent)
            return True
        except OSError:  # something arrived meanwhile (ENOTEMPTY) or went: leave it
            return False


_HARDLINK = "a hard link ({} names for one file): upload a copy, not a link"


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFLNK: "symbolic link",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
        stat.S_IFSOCK: "socket",
        stat.S_IFDIR: "directory",
    }
    return kinds.get(stat.S_IFMT(mode), "special file")


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def _hash_fd(fd: int, buf: bytearray) -> tuple[str, int]:
    """SHA-256 and size of the whole file `fd` (positional reads: the offset is kept)."""
    h = hashlib.sha256()
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
    return h.hexdigest(), offset


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _pread_exact(fd: int, buf: bytearray, length: int, offset: int) -> None:
    """Read `length` bytes at `offset` of `fd` into the start of `buf`."""
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[done:length]], offset + done)
        if not n:
            raise OSError(errno.EIO, "file shorter than expected (changed meanwhile?)")
        done += n


# --------------------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(path: str, wait: float | None):
    """Hold the transfer lock. `wait`: None fail at once, <0 forever, else seconds."""
    os.makedirs(os.path.dirname(path), exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if wait is None else (math.inf if wait < 0 else time.monotonic() + wait)
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = (deadline or 0) - time.monotonic()
                if deadline is None or left <= 0:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    waited = "" if wait is None else f" after waiting {wait:g} s"
                    raise TransferBusy(
                        f"another transfer is running (pid {holder}, lock {path}){waited}; "
                        "use --wait to wait for it"
                    ) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- CLI


def register(actions) -> None:
    """Add `scirepo storage transfer`."""
    p = actions.add_parser(
        "transfer",
        help="move complete uploads from the upload sandbox into site data",
        description=__doc__.split("\n\n", 1)[0]
        + " Exit codes: 0 done, 1 conflicts/refused/errors (reported, left in the sandbox), "
        "2 bad config or usage, 75 another transfer is running.",
    )
    p.add_argument("--site", action="append", help="only this site (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="report what would move; change nothing")
    p.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=-1.0,
        metavar="SECONDS",
        help="if another transfer is running, wait for it (forever, or at most SECONDS) "
        "instead of exiting with code 75",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every file, moved or waiting")
    p.add_argument(
        "--db", help=f"catalog database (default: {DEFAULT_PATH}); the lock is next to it"
    )
    p.set_defaults(func=cmd_transfer)


def lock_path(db: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(db)), "transfer.lock")


def cmd_transfer(args) -> int:
    cfg = sconfig.resolve(sconfig.load(sconfig.locate(args.config)))
    db = args.db or DEFAULT_PATH
    job = Transfer(cfg, db, sites=args.site, dry_run=args.dry_run)
    try:
        with contextlib.ExitStack() as stack:
            if not args.dry_run:
                stack.enter_context(locked(lock_path(db), args.wait))
            report = job.run()
    except TransferBusy as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BUSY
    if args.json:
        # One write: json.dump writes piece by piece (0.1 s for 5000 files to a pipe).
        print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False))
    else:
        print(report.text(verbose=args.verbose))
    return report.exit_code()
