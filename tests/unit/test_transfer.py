"""The sandbox-to-site-data transfer and its catalog, with real files (needs root: files of
other uids, device files, root-owned results).

Every check of the result hashes each file independently (hashlib over the whole file)
and compares the set of names, so "exactly once, intact" means: the destination holds
exactly the uploaded names, each with the uploaded bytes, no temporary files, and the
sandbox no longer holds them. The crash tests run the real CLI as a subprocess, kill it
with SIGKILL at each step (SCIREPO_TRANSFER_CRASH_AFTER), check that nothing at a final
name is damaged, run it again and check the result.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from scirepo import config
from scirepo.storage import transfer
from scirepo.storage.catalog import escape

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")

NOBODY = pwd.getpwnam("nobody").pw_uid
DAEMON = pwd.getpwnam("daemon").pw_uid
MARKER = ".complete"


class Site:
    """A site config under tmp_path with sites alpha and beta, and helpers around it."""

    def __init__(self, tmp_path: Path, **transfer_opts) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "srv"
        self.upload = self.root / "upload"
        self.data = self.root / "data"
        self.db = tmp_path / "state" / "catalog.db"
        self.config = tmp_path / "site.yml"
        self.configure(**transfer_opts)
        for site in ("alpha", "beta"):
            (self.upload / site).mkdir(parents=True, exist_ok=True)

    def configure(self, **transfer_opts) -> None:
        doc = {
            "site": {"name": "transfer test"},
            "storage": {
                "root": str(self.root),
                "sites": [{"name": "alpha"}, {"name": "beta"}],
                "transfer": transfer_opts,
            },
        }
        self.config.write_text(yaml.safe_dump(doc))

    def put(self, rel: str | bytes, data: bytes, uid: int = 0, marker: bool = True) -> Path:
        """An upload at upload/<rel> (rel starts with the site), owned by uid; with a
        marker of the same owner in its directory."""
        path = Path(os.fsdecode(os.path.join(os.fsencode(self.upload), os.fsencode(rel))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, uid, uid)
        if marker:
            self.mark(path.parent, uid)
        return path

    def mark(self, directory: Path, uid: int = 0) -> None:
        m = directory / MARKER
        m.touch()
        os.chown(m, uid, uid)

    def run(self, *args: str, env: dict | None = None, check_json: bool = True,
            batch_files: int | None = None):  # fmt: skip
        """`scirepo storage transfer --json ARGS` as a subprocess: (code, report, stderr);
        with `batch_files`, in batches of that many files (several batches, pipelined)."""
        start = ["-m", "scirepo"]
        if batch_files:
            start = ["-c", "import sys; from scirepo.storage import transfer; "
                     f"transfer.BATCH_FILES = {batch_files}; from scirepo.cli import main; "
                     "sys.exit(main(sys.argv[1:]))"]  # fmt: skip
        res = subprocess.run(
            [sys.executable, *start, "--config", str(self.config), "storage",
             "transfer", "--db", str(self.db), "--json", *args],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        report = json.loads(res.stdout) if (check_json and res.stdout.strip()) else None
        return res.returncode, report, res.stderr

    def catalog(self, *args: str, code: int = 0) -> list[dict]:
        """`scirepo storage catalog --json ARGS`, expecting exit code `code`."""
        res = subprocess.run(
            [sys.executable, "-m", "scirepo", "--config", str(self.config), "storage",
             "catalog", "--db", str(self.db), "--json", *args],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == code, res.stderr
        return json.loads(res.stdout)


def files(root: Path) -> dict[bytes, str]:
    """relative path (bytes) -> SHA-256 of every non-directory under root, markers aside;
    links and special files are listed as such, never followed."""
    out = {}
    top = os.fsencode(root)
    for dirpath, dirnames, names in os.walk(top):
        for name in names + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if name == MARKER.encode():
                continue
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = stat.filemode(st.st_mode)[0]
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def dataset(site: Site) -> dict[bytes, str]:
    """Uploads in both sites by three owners, one of 20 MiB (several chunks); returns what
    the site data must hold afterwards: b'<site>/<path>' -> SHA-256."""
    rnd = hashlib.sha256(b"seed").digest()
    big = (rnd * (20 * 2**20 // len(rnd) + 1))[: 20 * 2**20 + 12345]
    uploads = {
        b"alpha/run1/a.dat": (b"a" * 1000, 0),
        b"alpha/run1/b.dat": (os.urandom(70_000), 0),
        b"alpha/run1/deep/er/c.dat": (os.urandom(5), 0),
        b"alpha/run1/empty.dat": (b"", 0),
        b"alpha/run1/m-big.dat": (big, 0),
        b"alpha/run2/z.dat": (os.urandom(4096), NOBODY),
        b"beta/x/y.dat": (os.urandom(123_456), DAEMON),
    }
    for rel, (data, uid) in uploads.items():
        site.put(rel, data, uid)
    return {rel: sha(data) for rel, (data, _uid) in uploads.items()}


def site_data(site: Site) -> dict[bytes, str]:
    out = {}
    for name in ("alpha", "beta"):
        if (site.data / name).exists():
            out.update({name.encode() + b"/" + k: v for k, v in files(site.data / name).items()})
    return out


def assert_exactly_once(site: Site, expected: dict[bytes, str]) -> None:
    """Site data holds exactly `expected`, intact; the sandbox none of it; the catalog one
    row per file with the same SHA-256; no partial files anywhere."""
    assert site_data(site) == expected
    left = files(site.upload)
    assert not set(left) & set(expected), f"still in the sandbox: {set(left) & set(expected)}"
    db = sqlite3.connect(site.db)
    rows = {(s.encode() + b"/" + bytes(p), h) for s, p, h in db.execute(
        "SELECT site, path, sha256 FROM files")}  # fmt: skip
    assert rows == set(expected.items())
    assert db.execute("SELECT count(*) FROM partials").fetchone()[0] == 0
    db.close()


# --------------------------------------------------------------------------- clean run


@pytest.mark.parametrize("batch_files", [None, 2], ids=["one-batch", "batches-of-2"])
@pytest.mark.parametrize("verify", ["sha256", "compare"])
def test_clean_run_moves_every_complete_upload_once(tmp_path, verify, batch_files):
    site = Site(tmp_path, verify=verify)
    expected = dataset(site)
    code, report, err = site.run(batch_files=batch_files)
    assert code == 0, (report, err)
    assert report["counts"]["moved"] == len(expected)
    assert report["counts"]["conflicts"] == report["counts"]["refused"] == 0
    assert_exactly_once(site, expected)
    # Markers consumed, emptied directories gone, the site drop directories stay.
    assert sorted(os.listdir(site.upload)) == ["alpha", "beta"]
    assert os.listdir(site.upload / "alpha") == os.listdir(site.upload / "beta") == []
    # Root-owned, read-only data; directories as data/<site>; mtime kept.
    f = site.data / "alpha/run1/deep/er/c.dat"
    st = f.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o444)
    assert stat.S_IMODE((site.data / "alpha/run1/deep").stat().st_mode) == 0o2775
    # The catalog: uploader names, sizes, checksums; filters.
    rows = site.catalog()
    uploaders = {r["path"]: r["uploader"] for r in rows if r["site"] == "alpha"}
    assert uploaders["run2/z.dat"] == "nobody" and uploaders["run1/a.dat"] == "root"
    assert [r["path"] for r in site.catalog("--uploader", "daemon")] == ["x/y.dat"]
    assert [r["path"] for r in site.catalog("--site", "beta")] == ["x/y.dat"]
    assert {r["path"] for r in site.catalog("--path", "run1/*")} == {
        "run1/a.dat", "run1/b.dat", "run1/deep/er/c.dat", "run1/empty.dat", "run1/m-big.dat",
    }  # fmt: skip
    assert site.catalog("--since", "2999-01-01") == []
    assert len(site.catalog("--since", "2000-01-01")) == len(expected)
    big = next(r for r in rows if r["path"] == "run1/m-big.dat")
    assert big["sha256"] == expected[b"alpha/run1/m-big.dat"] and big["size"] > 20 * 2**20
    # A second run has nothing to do.
    code, report, _ = site.run()
    assert code == 0 and report["counts"]["moved"] == 0


def test_catalog_verify_finds_a_changed_file(site):
    expected = dataset(site)
    assert site.run()[0] == 0
    assert all(r["verified"] for r in site.catalog("--verify"))
    victim = site.data / "alpha/run1/a.dat"
    victim.chmod(0o644)
    victim.write_bytes(b"b" * 1000)
    res = subprocess.run(
        [sys.executable, "-m", "scirepo", "--config", str(site.config), "storage", "catalog",
         "--db", str(site.db), "--verify"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 1
    assert "run1/a.dat  !! SHA-256" in res.stdout
    rows = site.catalog("--verify", code=1)
    assert [r["path"] for r in rows if not r["verified"]] == ["run1/a.dat"]
    assert len(rows) == len(expected)


def test_dry_run_changes_nothing(site):
    expected = dataset(site)
    before = files(site.upload)
    code, report, _ = site.run("--dry-run")
    assert code == 0
    assert report["dry_run"] and report["counts"]["moved"] == len(expected)
    assert files(site.upload) == before
    assert site_data(site) == {}
    assert not site.db.exists()


def test_without_kernel_copy_and_renameat2(site, monkeypatch):
    """File systems without copy_file_range across them or RENAME_NOREPLACE (NFS, some
    FUSE): read/write copies and link(2) + unlink, with the same result."""
    expected = dataset(site)
    site.put("alpha/run1/taken.dat", b"upload")
    (site.data / "alpha/run1").mkdir(parents=True)
    (site.data / "alpha/run1/taken.dat").write_bytes(b"other")
    monkeypatch.setattr(transfer, "KERNEL_COPY", False)
    monkeypatch.setattr(transfer, "_rename_noreplace", lambda *a: False)
    cfg = config.resolve(config.load(site.config))
    report = transfer.Transfer(cfg, str(site.db)).run()
    assert [c["path"] for c in report.conflicts] == ["alpha/run1/taken.dat"]
    assert report.exit_code() == transfer.EXIT_ATTENTION
    expected[b"alpha/run1/taken.dat"] = sha(b"other")
    assert site_data(site) == expected
    assert (site.upload / "alpha/run1/taken.dat").read_bytes() == b"upload"


# --------------------------------------------------------------------------- completion


def test_marker_of_the_owner_or_root_completes_uploads(site):
    site.put("alpha/mine/ready.dat", b"ready", uid=NOBODY)  # marker of its owner
    site.put("alpha/theirs/half.dat", b"half", uid=NOBODY, marker=False)
    site.mark(site.upload / "alpha/theirs", uid=DAEMON)  # another user's marker: no
    site.put("alpha/nomark/n.dat", b"n", uid=NOBODY, marker=False)
    site.put("alpha/rooted/sub/r.dat", b"r", uid=NOBODY, marker=False)
    site.mark(site.upload / "alpha/rooted", uid=0)  # root's marker above: yes
    code, report, _ = site.run("-v")
    assert code == 0
    assert {m["path"] for m in report["moved"]} == {
        "alpha/mine/ready.dat", "alpha/rooted/sub/r.dat"}  # fmt: skip
    assert {w["path"] for w in report["waiting"]} == {"alpha/theirs/half.dat", "alpha/nomark/n.dat"}
    assert (site.upload / "alpha/theirs/half.dat").exists()
    assert (site.upload / "alpha/theirs" / MARKER).exists()  # not everything moved: kept
    assert not (site.upload / "alpha/mine").exists()


def test_quiet_mode_waits_for_quiet_files_and_writers(tmp_path):
    site = Site(tmp_path, complete="quiet", quiet_seconds=1)
    site.put("alpha/q/old.dat", b"old", marker=False)
    code, report, _ = site.run()
    assert code == 0 and report["counts"]["moved"] == 0
    assert "quiet period 1 s" in report["waiting"][0]["reason"]
    time.sleep(1.2)
    busy = site.put("alpha/q/busy.dat", b"busy", marker=False)
    time.sleep(1.2)
    with open(busy, "ab") as writer:  # someone still writing: a read lease is refused
        code, report, _ = site.run()
        assert code == 0
        assert [m["path"] for m in report["moved"]] == ["alpha/q/old.dat"]
        assert report["waiting"] == [{"path": "alpha/q/busy.dat", "reason": "open for writing"}]
        writer.write(b"!")
    time.sleep(1.2)
    code, report, _ = site.run()
    assert [m["path"] for m in report["moved"]] == ["alpha/q/busy.dat"]
    assert (site.data / "alpha/q/busy.dat").read_bytes() == b"busy!"


def test_ignored_names_stay(site):
    site.put("alpha/d/x.dat.part", b"partial")
    site.put("alpha/d/x.dat", b"whole")
    code, report, _ = site.run()
    assert code == 0
    assert [i["path"] for i in report["ignored"]] == ["alpha/d/x.dat.part"]
    assert (site.upload / "alpha/d/x.dat.part").exists()
    assert (site.data / "alpha/d/x.dat").read_bytes() == b"whole"


# --------------------------------------------------------------------------- conflicts


def test_a_different_file_at_the_destination_is_a_conflict(site):
    site.put("alpha/c/new.dat", b"new upload")
    (site.data / "alpha/c").mkdir(parents=True)
    (site.data / "alpha/c/new.dat").write_bytes(b"older data")
    site.put("alpha/c/same.dat", b"same bytes")
    (site.data / "alpha/c/same.dat").write_bytes(b"same bytes")
    code, report, _ = site.run(batch_files=1)  # each file a batch of its own
    assert code == transfer.EXIT_ATTENTION
    [conflict] = report["conflicts"]
    assert conflict["path"] == "alpha/c/new.dat"
    assert conflict["upload_sha256"] == sha(b"new upload")
    assert conflict["destination_sha256"] == sha(b"older data")
    assert (site.data / "alpha/c/new.dat").read_bytes() == b"older data"  # never replaced
    assert (site.upload / "alpha/c/new.dat").read_bytes() == b"new upload"  # left
    # An identical file already there is the same upload: recorded, upload removed.
    assert [m["path"] for m in report["moved"]] == ["alpha/c/same.dat"]
    assert report["moved"][0]["recovered"]
    assert not (site.upload / "alpha/c/same.dat").exists()
    [row] = site.catalog("--path", "c/same.dat")
    assert row["how"] == "found in place"
    # The human report names the conflict.
    res = subprocess.run(
        [sys.executable, "-m", "scirepo", "--config", str(site.config), "storage",
         "transfer", "--db", str(site.db)], cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 1
    assert "conflict  alpha/c/new.dat: a different file is at the destination" in res.stdout


def test_destination_not_a_regular_file_is_a_conflict(site):
    site.put("alpha/k/dir.dat", b"x")
    site.put("alpha/k/f/inner.dat", b"y")
    (site.data / "alpha/k/dir.dat").mkdir(parents=True)  # a directory where a file goes
    (site.data / "alpha/k/f").write_bytes(b"")  # a file where a directory goes
    code, report, _ = site.run()
    assert code == 1
    reasons = {c["path"]: c["reason"] for c in report["conflicts"]}
    assert "directory" in reasons["alpha/k/dir.dat"]
    assert "not a directory" in reasons["alpha/k/f/inner.dat"]


# --------------------------------------------------------------------------- hostile input


HOSTILE = [
    b"with space.dat",
    b"new\nline.dat",
    b"tab\tand\\backslash",
    b"latin1-\xe9t\xe9.dat",  # not UTF-8
    b"\xff\xfe",
    b"-leading-dash",
    b"rtl-\xe2\x80\xaeevil.dat",  # U+202E, a format character
    b"n" * 255,  # NAME_MAX: the temporary name must not be longer
    b".hidden",
    b"\xce\xbbambda.dat",  # valid UTF-8, stays as it is
]


def test_hostile_names_move_and_are_reported_escaped(site):
    expected = {}
    for i, name in enumerate(HOSTILE):
        data = f"{i}".encode() * 100
        site.put(b"alpha/h/" + name, data)
        expected[b"alpha/h/" + name] = sha(data)
    code, report, err = site.run("-v")
    assert code == 0, (report, err)
    assert_exactly_once(site, expected)
    shown = {m["path"] for m in report["moved"]}
    assert "alpha/h/new\\nline.dat" in shown
    assert "alpha/h/latin1-\\xe9t\\xe9.dat" in shown
    assert "alpha/h/\\xff\\xfe" in shown
    assert "alpha/h/rtl-\\u202eevil.dat" in shown
    assert "alpha/h/tab\\tand\\\\backslash" in shown
    assert "alpha/h/λambda.dat" in shown
    assert all("\n" not in p for p in shown)
    [row] = site.catalog("--path", "*new\\nline*")  # the glob matches the escaped form
    assert row["path"] == "h/new\\nline.dat" and "path_hex" not in row
    [row] = site.catalog("--path", "h/\\xff*")
    assert bytes.fromhex(row["path_hex"]) == b"h/\xff\xfe"


def test_escape_is_unambiguous():
    assert escape(b"a\nb") == "a\\nb"
    assert escape(b"a\\nb") == "a\\\\nb"
    assert escape(b"\xff") == "\\xff"
    assert escape(b"\\xff") == "\\\\xff"
    assert escape(b"\x1b[31m") == "\\x1b[31m"
    assert escape("plain é".encode()) == "plain é"


def test_links_devices_and_special_files_are_refused_and_left(site, tmp_path):
    site.put("alpha/s/good.dat", b"good")
    s = site.upload / "alpha/s"
    os.symlink("/etc/passwd", s / "passwd-link")
    os.symlink("/etc", s / "etc-dir-link")
    elsewhere = tmp_path / "private.dat"  # another user's file, hard-linked in
    elsewhere.write_bytes(b"secret")
    os.chown(elsewhere, NOBODY, NOBODY)
    os.link(elsewhere, s / "stolen.dat")
    site.put("alpha/s/twice-a.dat", b"twice")
    os.link(s / "twice-a.dat", s / "twice-b.dat")  # own file, two names: refused too
    os.mkfifo(s / "fifo")
    os.mknod(s / "null-device", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(s / "socket"))
        code, report, err = site.run()
    assert code == transfer.EXIT_ATTENTION, err
    refused = {r["path"]: r["reason"] for r in report["refused"]}
    assert refused == {
        "alpha/s/etc-dir-link": "symbolic link",
        "alpha/s/passwd-link": "symbolic link",
        "alpha/s/stolen.dat": transfer._HARDLINK.format(2),
        "alpha/s/twice-a.dat": transfer._HARDLINK.format(2),
        "alpha/s/twice-b.dat": transfer._HARDLINK.format(2),
        "alpha/s/fifo": "FIFO",
        "alpha/s/null-device": "character device",
        "alpha/s/socket": "socket",
    }
    assert site_data(site) == {b"alpha/s/good.dat": sha(b"good")}
    for name in refused:
        assert os.path.lexists(site.upload / name), name  # left in the sandbox
    assert elsewhere.read_bytes() == b"secret" and elsewhere.stat().st_nlink == 2
    assert (site.upload / "alpha/s" / MARKER).exists()  # the directory is not done


def test_files_outside_site_directories_are_refused(site):
    (site.upload / "stray.dat").write_bytes(b"?")
    site.put("gamma/unknown-site.dat", b"?")
    code, report, _ = site.run()
    assert code == 1
    assert {r["path"] for r in report["refused"]} == {"stray.dat", "gamma"}
    assert (site.upload / "gamma/unknown-site.dat").exists()


def test_missing_site_drop_directories_are_created(site):
    os.rmdir(site.upload / "beta")
    assert site.run()[0] == 0
    st = (site.upload / "beta").stat()
    assert stat.S_IMODE(st.st_mode) == 0o1770 and st.st_uid == 0


def test_operator_symlinks_to_the_areas_are_followed(site, tmp_path):
    """The configured areas may be links (data on another disk); links inside are not."""
    real = tmp_path / "bigdisk-alpha"
    real.mkdir()
    site.data.mkdir(parents=True, exist_ok=True)
    os.symlink(real, site.data / "alpha")
    site.put("alpha/o/f.dat", b"to the big disk")
    assert site.run()[0] == 0
    assert (real / "o/f.dat").read_bytes() == b"to the big disk"


# --------------------------------------------------------------------------- crashes


CRASHES = [
    "partial:1", "partial:5",  # in the middle of the first file; of the 20 MiB file
    "copied:1", "copied:4", "synced", "linked:1", "linked:3", "placed:2",
    "recorded", "removed:1", "removed:6",
]  # fmt: skip


@pytest.mark.parametrize("batch_files", [None, 2], ids=["one-batch", "batches-of-2"])
@pytest.mark.parametrize("crash", CRASHES)
def test_killed_at_any_step_then_rerun_gives_each_file_once_intact(site, crash, batch_files):
    expected = dataset(site)
    code, _report, err = site.run(
        env={transfer.CRASH_ENV: crash}, check_json=False, batch_files=batch_files
    )
    assert code == -signal.SIGKILL, f"the crash hook did not fire: {code} {err}"
    # Whatever is at a final name already is intact (a partial copy never has one).
    for rel, digest in site_data(site).items():
        if not os.path.basename(rel).startswith(transfer.PARTIAL_PREFIX.encode()):
            assert digest == expected[rel], rel
    # Nothing lost: every upload is in the sandbox or in site data.
    assert set(expected) <= set(files(site.upload)) | set(site_data(site))
    code, report, err = site.run()
    assert code == 0, (report, err)
    assert_exactly_once(site, expected)
    assert report["counts"]["moved"] <= len(expected)


def test_a_big_file_killed_mid_copy_leaves_a_partial_that_the_next_run_removes(site):
    expected = dataset(site)
    # m-big.dat is the 5th file in name order (a, b, deep/er/c, empty, m-big).
    code, _, _ = site.run(env={transfer.CRASH_ENV: "partial:5"}, check_json=False)
    assert code == -signal.SIGKILL
    partials = list(site.data.rglob(transfer.PARTIAL_PREFIX + "*"))
    # The four files before it are copied, not yet linked; the big one half written; the
    # temporary files of the later ones may be made already (empty).
    sizes = sorted(p.stat().st_size for p in partials)
    assert len(partials) >= 5
    assert sizes[-1] == 4 * 2**20  # half of the first chunk
    assert len([s for s in sizes if s]) == 4  # the empty file's copy is empty too
    # Each was recorded in the catalog before it was made.
    db = sqlite3.connect(site.db)
    recorded = {name for (name,) in db.execute("SELECT name FROM partials")}
    db.close()
    assert {p.name for p in partials} <= recorded
    assert (site.upload / "alpha/run1/m-big.dat").exists()
    code, _, _ = site.run()
    assert code == 0
    assert not any(p.exists() for p in partials)
    assert_exactly_once(site, expected)


def test_bad_crash_hook_is_a_usage_error(site):
    code, _, err = site.run(env={transfer.CRASH_ENV: "nowhere"}, check_json=False)
    assert code == 2 and "STEP[:N]" in err


# --------------------------------------------------------------------------- concurrency


def test_a_second_transfer_exits_75_or_waits(site):
    site.put("alpha/l/f.dat", b"locked")
    lock = transfer.lock_path(str(site.db))
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"4242\n", 0)
    try:
        code, report, err = site.run()
        assert code == transfer.EXIT_BUSY and report is None
        assert "another transfer is running (pid 4242" in err
        t0 = time.monotonic()
        code, _, err = site.run("--wait", "0.5")
        assert code == transfer.EXIT_BUSY and time.monotonic() - t0 >= 0.5
        assert "after waiting 0.5 s" in err
        threading.Timer(0.7, os.close, [fd]).start()  # the holder finishes
        t0 = time.monotonic()
        code, report, _ = site.run("--wait")
        assert code == 0 and time.monotonic() - t0 >= 0.6
        assert [m["path"] for m in report["moved"]] == ["alpha/l/f.dat"]
    finally:
        os.close(fd) if _is_open(fd) else None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("wait", [False, True])
def test_two_transfers_started_at_once(site, wait):
    expected = {}
    for i in range(300):
        data = os.urandom(2000 + i)
        site.put(f"alpha/many/d{i % 7}/f{i:03d}.dat", data)
        expected[f"alpha/many/d{i % 7}/f{i:03d}.dat".encode()] = sha(data)
    argv = [sys.executable, "-m", "scirepo", "--config", str(site.config), "storage",
            "transfer", "--db", str(site.db), "--json", *(["--wait"] if wait else [])]  # fmt: skip
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, transfer.EXIT_BUSY]), results
    if wait:
        assert codes == [0, 0]
    moved = [json.loads(out)["counts"]["moved"] for code, out, _ in results if code == 0]
    assert sum(moved) == len(expected)  # each file moved by exactly one of them
    assert_exactly_once(site, expected)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_errors(tmp_path):
    cfg = config.validate({"site": {"name": "x"}})
    opts = cfg["storage"]["transfer"]
    assert (opts["complete"], opts["marker"], opts["verify"]) == ("marker", ".complete", "compare")
    with pytest.raises(config.ConfigError) as exc:
        config.validate(
            {"site": {"name": "x"}, "storage": {"transfer": {"complete": "soon", "marker": "a/b"}}}
        )
    text = str(exc.value)
    assert "storage.transfer.complete" in text and "storage.transfer.marker" in text


def test_unknown_site_option_is_an_error(site):
    code, _, err = site.run("--site", "nope", check_json=False)
    assert code == 2 and "unknown site(s) nope" in err
