"""The catalog of site data: one row per file the transfer put into a site.

A row holds the site, the path under the site directory, size, SHA-256, uploader (name and
uid), the file's modification time and when it was transferred. Paths are Unix names, that
is bytes: they are stored as bytes (`path`) and, for display and `--path` globs, in the
escaped form of `escape` (`path_text`), which is printable, one line and unambiguous.

The `partials` table lists the temporary files a transfer is writing, recorded before they
are created, so a transfer started after a crash removes exactly those and nothing else.

SQLite (the standard library's sqlite3) in WAL mode, synchronous=FULL: a row is on disk
when its transaction returns, before the transfer removes the upload it describes.
`scirepo storage catalog` queries the catalog and, with `--verify`, hashes the files again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sqlite3
import stat
import sys
from pathlib import Path

from scirepo import dbtx
from scirepo.config import HOST_PATHS, ScirepoError

log = logging.getLogger("scirepo.storage")

DEFAULT_PATH = HOST_PATHS["state"] + "/storage/catalog.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    path BLOB NOT NULL,
    path_text TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    uploader TEXT NOT NULL,
    uploader_uid INTEGER NOT NULL,
    mtime TEXT NOT NULL,
    transferred TEXT NOT NULL,
    how TEXT NOT NULL,
    UNIQUE (site, path)
);
CREATE INDEX IF NOT EXISTS files_transferred ON files (transferred);
CREATE INDEX IF NOT EXISTS files_uploader ON files (uploader);
CREATE TABLE IF NOT EXISTS partials (
    site TEXT NOT NULL,
    dir BLOB NOT NULL,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (site, dir, name)
);
"""

COLUMNS = ("site", "path", "size", "sha256", "uploader", "uploader_uid", "mtime",
           "transferred", "how")  # fmt: skip


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def iso_ns(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(raw: bytes | str) -> str:
    """A printable, one-line, unambiguous text for a Unix name (bytes).

    Valid UTF-8 stays as it is; a backslash becomes `\\\\`; newline, tab and CR become
    `\\n`, `\\t`, `\\r`; other control and format characters `\\xHH` or `\\uHHHH`; bytes
    that are not UTF-8 `\\xHH`. A str is taken as decoded with surrogateescape.
    """
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def db_path(args_db: str | None = None) -> str:
    return args_db or DEFAULT_PATH


class Catalog:
    """One connection to the catalog database."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        path = Path(path)
        if not path.exists():
            if not create:
                raise ScirepoError(f"no catalog at {path}: no transfer has run yet")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            # Only a missing file: closing any other descriptor of an open SQLite file
            # drops this process's POSIX locks on it, and corrupts the database.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
        return dbtx.transaction(self.db)

    # ----------------------------------------------------------------------- files

    def get(self, site: str, path: bytes) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM files WHERE site = ? AND path = ?", (site, path)
        ).fetchone()

    @staticmethod
    def record(db, entries: list[dict]) -> None:
        """Insert or replace the rows of (site, path) of `entries` inside transaction `db`."""
        db.executemany(
            "INSERT INTO files (site, path, path_text, size, sha256, uploader, uploader_uid,"
            " mtime, transferred, how) VALUES (:site, :path, :path_text, :size, :sha256,"
            " :uploader, :uploader_uid, :mtime, :transferred, :how)"
            " ON CONFLICT (site, path) DO UPDATE SET size = excluded.size,"
            " sha256 = excluded.sha256, uploader = excluded.uploader,"
            " uploader_uid = excluded.uploader_uid, mtime = excluded.mtime,"
            " transferred = excluded.transferred, how = excluded.how,"
            " path_text = excluded.path_text",
            entries,
        )

    def query(
        self,
        *,
        sites: list[str] | None = None,
        uploader: str | None = None,
        path_glob: str | None = None,
        since: str | None = None,
        sha256: str | None = None,
    ) -> list[sqlite3.Row]:
        where, params = [], []
        if sites:
            where.append(f"site IN ({','.join('?' * len(sites))})")
            params += sites
        if uploader:
            where.append("(uploader = ? OR CAST(uploader_uid AS TEXT) = ?)")
            params += [uploader, uploader]
        if path_glob:
            where.append("path_text GLOB ?")
            params.append(path_glob)
        if since:
            where.append("transferred >= ?")
            params.append(since)
        if sha256:
            where.append("sha256 LIKE ?")
            params.append(sha256.lower() + "%")
        sql = "SELECT * FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.db.execute(sql + " ORDER BY transferred, site, path", params).fetchall()

    # ----------------------------------------------------------------------- partials

    @staticmethod
    def add_partials(db, rows: list[tuple[str, bytes, str]]) -> None:
        stamp = now()
        db.executemany(
            "INSERT OR IGNORE INTO partials (site, dir, name, created) VALUES (?, ?, ?, ?)",
            [(*r, stamp) for r in rows],
        )

    @staticmethod
    def drop_partials(db, rows: list[tuple[str, bytes, str]]) -> None:
        db.executemany("DELETE FROM partials WHERE site = ? AND dir = ? AND name = ?", rows)

    def partials(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM partials ORDER BY site, dir, name").fetchall()


def row_dict(row: sqlite3.Row) -> dict:
    """A catalog row for JSON: the path escaped, the raw bytes as hex when not UTF-8."""
    out = {k: row[k] for k in COLUMNS}
    out["path"] = row["path_text"]
    with contextlib.suppress(UnicodeDecodeError):
        bytes(row["path"]).decode("utf-8")
        return out
    out["path_hex"] = bytes(row["path"]).hex()
    return out


# --------------------------------------------------------------------------- verify


def verify_row(site_dir: str, row: sqlite3.Row) -> str | None:
    """Hash the site file of a catalog row again: None if intact, else what is wrong."""
    path = os.fsencode(site_dir) + b"/" + bytes(row["path"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        # Page cache contents are what the transfer checked: drop them so that these
        # reads come from the storage where the kernel lets us.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        buf = bytearray(1 << 22)
        view = memoryview(buf)
        size = 0
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            size += n
    finally:
        os.close(fd)
    if size != row["size"]:
        return f"size {size}, catalog says {row['size']}"
    if h.hexdigest() != row["sha256"]:
        return f"SHA-256 {h.hexdigest()}, catalog says {row['sha256']}"
    return None


# --------------------------------------------------------------------------- CLI


def _since(text: str) -> str:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ScirepoError(f"--since: {text!r} is not a date (YYYY-MM-DD[THH:MM[:SS]])") from None
    if when.tzinfo is None:
        when = when.astimezone()  # a date without zone is local time, as `date` prints it
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def register(actions) -> None:
    """Add `scirepo storage catalog`."""
    p = actions.add_parser(
        "catalog",
        help="list transferred files (site, path, size, SHA-256, uploader, time)",
        description="List the files the transfer put into site data, from the catalog. "
        "Paths are relative to the site directory and escaped (\\n, \\t, \\\\, \\xHH for "
        "bytes that are not UTF-8). With --verify, hash each listed file again and exit 1 "
        "if any is missing or differs.",
    )
    p.add_argument("--site", action="append", help="only this site (repeatable)")
    p.add_argument("--uploader", help="only files of this user (name or uid)")
    p.add_argument("--path", metavar="GLOB", help="only paths matching this glob (escaped form)")
    p.add_argument("--since", metavar="DATE", help="only files transferred at or after DATE")
    p.add_argument("--sha256", metavar="HEX", help="only files whose SHA-256 starts with HEX")
    p.add_argument("--verify", action="store_true", help="hash the listed files again")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    p.add_argument("--db", help=f"catalog database (default: {DEFAULT_PATH})")
    p.set_defaults(func=cmd_catalog)


def cmd_catalog(args) -> int:
    catalog = Catalog(db_path(args.db), create=False)
    try:
        rows = catalog.query(
            sites=args.site,
            uploader=args.uploader,
            path_glob=args.path,
            since=_since(args.since) if args.since else None,
            sha256=args.sha256,
        )
    finally:
        catalog.close()
    problems: dict[int, str] = {}
    if args.verify:
        from scirepo import config as sconfig

        cfg = sconfig.resolve(sconfig.load(sconfig.locate(args.config)))
        for i, row in enumerate(rows):
            site_dir = cfg["paths"]["sites"].get(row["site"])
            problem = verify_row(site_dir, row) if site_dir else "site no longer configured"
            if problem:
                problems[i] = problem
    if args.json:
        out = []
        for i, row in enumerate(rows):
            item = row_dict(row)
            if args.verify:
                item["verified"] = i not in problems
                if i in problems:
                    item["problem"] = problems[i]
            out.append(item)
        # One write: json.dump writes piece by piece (0.1 s for 5000 rows to a pipe).
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        for i, row in enumerate(rows):
            line = (
                f"{row['transferred'][:19]}  {row['site']:<14} {row['uploader']:<12} "
                f"{row['size']:>13}  {row['sha256'][:16]}  {row['path_text']}"
            )
            if i in problems:
                line += f"  !! {problems[i]}"
            print(line)
        total = sum(r["size"] for r in rows)
        summary = f"{len(rows)} file(s), {total} bytes"
        if args.verify:
            summary += f"; {len(rows) - len(problems)} intact, {len(problems)} with problems"
        print(summary, file=sys.stderr)
    return 1 if problems else 0
