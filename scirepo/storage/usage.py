"""Disk usage per user and per area, and the soft quota: `scirepo storage usage` and
`scirepo storage quota-check`.

Usage is counted the way the kernel's quotas count it: the blocks allocated to each file
(st_blocks, so sparse files count what they use), charged to the file's owner, a file
with several hard links once. Every area is walked from its top with directory file
descriptors: symbolic links are counted as links and never followed, and directories on
another file system (a mount below an area) are not entered. Areas: `workspace`,
`public`, `scratch`, `upload`, `groups` (the whole area directories, so a file a user
owns in someone else's group directory is theirs) and `home` (the platform users' homes).

`quota-check` (a systemd timer runs it every storage.quota.check_interval) compares each
platform user's total with storage.quota: for a user over it, it writes a notice to
paths.quota_notices/<user> (root:<user's group> 0640, in a directory others cannot
list), which /etc/profile.d/scirepo-quota.sh prints at that user's SSH logins, and emails
the user once, then again every remind_days; a user back under it loses the notice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import pwd
import re
import stat
import tempfile
from email.message import EmailMessage

from scirepo import config as sconfig
from scirepo.config import ScirepoError
from scirepo.users import platform_users

log = logging.getLogger(__name__)

AREAS = ("workspace", "public", "scratch", "upload", "groups", "home")
_AREA_PATHS = {"workspace": "workspaces", "public": "public", "scratch": "scratch",
               "upload": "upload", "groups": "groups"}  # fmt: skip
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes of a size of the schema (`50G`, `1.5T`, `0`); ScirepoError if malformed."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)", str(text))
    if not m:
        raise ScirepoError(f"invalid size {text!r}: digits with an optional K, M, G or T")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def walk(top: str, seen: set | None = None) -> tuple[dict[int, int], dict[str, int], list[str]]:
    """Walk `top` without following links or leaving its file system.

    Returns (bytes per owner uid, bytes per entry directly below `top`, errors). `seen`
    holds (dev, inode) of files with several links already counted (shared between walks,
    so a hard link from one area into another counts once)."""
    seen = set() if seen is None else seen
    by_uid: dict[int, int] = {}
    by_top: dict[str, int] = {}
    errors: list[str] = []
    try:
        root = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return by_uid, by_top, [f"{top}: {exc.strerror}"]
    dev = os.fstat(root).st_dev
    # Depth first; a directory is opened only when it is its turn, from its parent's fd,
    # which stays open until its last subdirectory has been opened: the open descriptors
    # stay few whatever the width of the tree.
    parents: dict[int, list] = {}  # fd -> [subdirectories still to open, path]
    stack: list[tuple[int | None, str, str | None]] = [(None, top, None)]
    while stack:
        parent, name, first = stack.pop()
        if parent is None:
            fd, path = root, top
        else:
            path = f"{parents[parent][1]}/{name}"
            try:
                fd = os.open(name, _DIR, dir_fd=parent)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                fd = None
            parents[parent][0] -= 1
            if parents[parent][0] == 0:
                del parents[parent]
                os.close(parent)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries]
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
            names = []
        subdirs = []
        for entry in names:
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            where = first if first is not None else entry
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            size = st.st_blocks * 512
            by_uid[st.st_uid] = by_uid.get(st.st_uid, 0) + size
            by_top[where] = by_top.get(where, 0) + size
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:  # no other file systems
                subdirs.append((fd, entry, where))
        if subdirs:
            parents[fd] = [len(subdirs), path]
            stack.extend(subdirs)
        else:
            os.close(fd)
    return by_uid, by_top, errors


def quota_of(cfg: dict, username: str) -> int | None:
    """The soft quota of `username` in bytes, or None for none."""
    q = cfg["storage"]["quota"]
    size = parse_size(q["users"].get(username, q["soft"]))
    return size or None


def usage(cfg: dict) -> dict:
    """Usage of every platform user per area, totals per area and per group."""
    accounts = platform_users(cfg)
    seen: set = set()
    per_area: dict[str, dict[int, int]] = {}
    report = {"users": {}, "areas": {}, "groups": {}, "errors": []}
    for area, key in _AREA_PATHS.items():
        by_uid, by_top, errors = walk(cfg["paths"][key], seen)
        per_area[area] = by_uid
        report["areas"][area] = sum(by_uid.values())
        report["errors"] += errors
        if area == "groups":
            report["groups"] = dict(sorted(by_top.items()))
    homes: dict[int, int] = {}
    for account in accounts:
        home = account.pw_dir
        if not os.path.isdir(home) or os.path.islink(home):
            continue
        by_uid, _, errors = walk(home, seen)
        report["errors"] += errors
        for uid, size in by_uid.items():
            homes[uid] = homes.get(uid, 0) + size
    per_area["home"] = homes
    report["areas"]["home"] = sum(homes.values())
    for account in accounts:
        row = {area: per_area[area].get(account.pw_uid, 0) for area in AREAS}
        row["total"] = sum(row.values())
        quota = quota_of(cfg, account.pw_name)
        row["quota"] = quota
        row["over"] = quota is not None and row["total"] > quota
        report["users"][account.pw_name] = row
    return report


def text_report(report: dict) -> str:
    head = ["user", *AREAS, "total", "quota"]
    rows = [head]
    for name, row in report["users"].items():
        quota = human(row["quota"]) if row["quota"] else "-"
        mark = " OVER" if row["over"] else ""
        rows.append([name, *(human(row[a]) for a in AREAS), human(row["total"]), quota + mark])
    rows.append(["(all owners)", *(human(report["areas"][a]) for a in AREAS), "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if report["groups"]:
        lines += ["", "group areas:"]
        lines += [f"  {g}: {human(n)}" for g, n in report["groups"].items()]
    lines += [f"error: {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- quota check


def _notice(cfg: dict, name: str, row: dict) -> str:
    parts = ", ".join(f"{a} {human(row[a])}" for a in AREAS if row[a])
    days = cfg["storage"]["scratch"]["max_age_days"]
    return (
        f"*** Storage: you use {human(row['total'])}, over your soft quota of "
        f"{human(row['quota'])} on {cfg['site']['name']} ({parts}).\n"
        "*** Please delete or move files; `du -sh ~/workspace/ ~/workspace/public/ "
        "~/workspace/scratch/` shows where they are. Files in scratch untouched for "
        f"{days} days are removed automatically.\n"
    )


def _write_notice(directory: str, name: str, gid: int, text: str) -> None:
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError), open(path) as fh:
        if fh.read() == text:
            return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".notice-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chown(tmp, 0, gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _email_of(account: pwd.struct_passwd) -> str | None:
    fields = account.pw_gecos.split(",")
    address = fields[4].strip() if len(fields) > 4 else ""
    return address if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address) else None


def _mail(cfg: dict, account: pwd.struct_passwd, notice: str, to: str) -> EmailMessage:
    from scirepo.accounts.mail import sender

    msg = EmailMessage()
    msg["From"] = sender(cfg)
    msg["To"] = to
    msg["Subject"] = f"Your storage on {cfg['site']['name']} is over its quota"
    body = notice.replace("*** ", "")
    msg.set_content(
        f"Dear {account.pw_gecos.split(',')[0] or account.pw_name},\n\n{body}\n"
        f"Questions: {cfg['site']['contact_email']}\n"
    )
    return msg


def quota_check(cfg: dict, directory: str | None = None, smtp=None, now=None) -> dict:
    """Warn every platform user over quota (notice file, email); return what was done:
    {"over": [...], "notified": [...], "mailed": [...], "mail_errors": {...}}.

    `smtp` is an object with `send(EmailMessage)` (default: accounts.smtp of the config).
    A mail that fails is tried again at the next check."""
    directory = directory or cfg["paths"]["quota_notices"]
    now = now or dt.datetime.now(dt.UTC)
    os.makedirs(directory, mode=0o711, exist_ok=True)
    # Each user reads their own notice by name; no one lists them.
    os.chmod(directory, 0o711)  # noqa: S103
    state_path = os.path.join(directory, ".mailed.json")
    try:
        with open(state_path) as fh:
            mailed = json.load(fh)
    except FileNotFoundError:
        mailed = {}
    report = usage(cfg)
    q = cfg["storage"]["quota"]
    result = {"over": [], "notified": [], "mailed": [], "mail_errors": {}}
    accounts = {a.pw_name: a for a in platform_users(cfg)}
    for name, row in report["users"].items():
        account = accounts[name]
        if not row["over"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                log.info("%s is under quota again", name)
            mailed.pop(name, None)
            continue
        result["over"].append(name)
        notice = _notice(cfg, name, row)
        _write_notice(directory, name, account.pw_gid, notice)
        result["notified"].append(name)
        last = mailed.get(name)
        due = last is None or now - dt.datetime.fromisoformat(last) >= dt.timedelta(
            days=q["remind_days"]
        )
        address = _email_of(account)
        if not (q["email"] and due and address):
            continue
        try:
            if smtp is None:
                from scirepo.accounts.mail import smtp_from_config

                smtp = smtp_from_config(cfg)
            smtp.send(_mail(cfg, account, notice, address))
        except Exception as exc:  # noqa: BLE001 - any mail failure is retried next time
            result["mail_errors"][name] = f"{type(exc).__name__}: {exc}"
            log.warning("quota mail to %s (%s) failed: %s", name, address, exc)
            continue
        mailed[name] = now.isoformat()
        result["mailed"].append(name)
        log.info("mailed %s (%s): over quota", name, address)
    # Notices of accounts that are gone, or no longer over quota, go too.
    for entry in os.listdir(directory):
        if not entry.startswith(".") and entry not in result["over"]:
            os.unlink(os.path.join(directory, entry))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mailed-")
    with os.fdopen(fd, "w") as fh:
        json.dump(mailed, fh)
    os.replace(tmp, state_path)  # mkstemp made it 0600 root
    return result


# --------------------------------------------------------------------------- CLI


def register(actions) -> None:
    use = actions.add_parser(
        "usage",
        help="disk usage per user and area, with the soft quota",
        description="Disk usage per platform user and per area (allocated blocks, by "
        "owner; links never followed, other file systems not entered).",
    )
    use.add_argument("--json", action="store_true", help="print the report as JSON")
    use.set_defaults(func=_cmd_usage)
    check = actions.add_parser(
        "quota-check",
        help="warn users over their soft quota (login notice, email)",
        description=__doc__,
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=_cmd_quota_check)


def _site(args) -> dict:
    if os.geteuid() != 0:
        raise ScirepoError("reading every user's usage needs root")
    return sconfig.resolve(sconfig.load(sconfig.locate(args.config)))


def _cmd_usage(args) -> int:
    report = usage(_site(args))
    print(json.dumps(report, indent=2) if args.json else text_report(report), end="")
    if args.json:
        print()
    return 0


def _cmd_quota_check(args) -> int:
    result = quota_check(_site(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"over quota: {' '.join(result['over']) or 'nobody'}")
        if result["mailed"]:
            print(f"mailed: {' '.join(result['mailed'])}")
        for name, error in result["mail_errors"].items():
            print(f"mail to {name} failed: {error}")
    return 1 if result["mail_errors"] else 0
