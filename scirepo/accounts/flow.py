"""What happens to a signup request, step by step; shared by the web service and the CLI.

Each function checks, records (Store, one transaction) and only then acts on the host, and
every host action is idempotent, so that a service killed between any two steps finishes the
request when started again: no duplicate user, no lost request, one welcome mail.
`provision` needs root (it runs useradd and chpasswd).

For the crash tests, SCIREPO_ACCOUNTS_CRASH_AFTER=<step> makes the process kill itself
with SIGKILL right after that step (useradd, account_created, password_set).
"""

from __future__ import annotations

import fcntl
import grp
import json
import logging
import os
import pwd
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scirepo import users
from scirepo.accounts import mail, names
from scirepo.accounts.names import AccountInputError
from scirepo.accounts.store import (
    ACCOUNT_CREATED,
    ACTIVE,
    APPROVED,
    DISABLED,
    PENDING,
    REJECTED,
    TODO_STATES,
    Store,
    StoreError,
)
from scirepo.accounts.validate import validate_signup

log = logging.getLogger("scirepo.accounts")

CRASH_ENV = "SCIREPO_ACCOUNTS_CRASH_AFTER"
HUB_TOKEN = "accounts_hub_token"  # noqa: S105 - file under paths.secrets: the service's hub API token
HUB_API = "http://127.0.0.1:8000/hub/api"
ARCHIVE_DIR = "/var/lib/scirepo/accounts/archive"


class FormError(AccountInputError):
    """A submission was refused; `errors` maps each field to its message."""

    def __init__(self, errors: dict) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        log.warning("crash test: killing myself after %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


def _reserved(cfg: dict) -> list[str]:
    return [*cfg["users"]["reserved_names"], cfg["users"]["group"],
            cfg["storage"]["data_managers_group"]]  # fmt: skip


def _unix_taken(name: str) -> bool:
    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup(name)
            return True
        except KeyError:
            pass
    return False


def _free_username(store: Store, cfg: dict, full_name: str, except_id=None) -> str | None:
    try:
        return names.choose_username(
            full_name,
            lambda c: _unix_taken(c) or store.username_taken(c, except_id),
            _reserved(cfg),
        )
    except AccountInputError:
        return None  # no Latin letters: an admin chooses


def _auto_approved(cfg: dict, email: str) -> bool:
    domain = email.rsplit("@", 1)[1].lower()
    return any(
        domain == d or domain.endswith("." + d) for d in cfg["accounts"]["auto_approve_domains"]
    )


# --------------------------------------------------------------------------- requests


def submit(store: Store, cfg: dict, form, client: str, source: str = "form",
           policy_required: bool = True) -> int:  # fmt: skip
    """Validate and store a request; queue its mails; return its id. FormError if refused."""
    clean, errors = validate_signup(form, policy_required=policy_required)
    if errors:
        raise FormError(errors)
    if store.email_taken(clean["email"]):
        raise FormError({"email": "There is already an account or a request for this email."})
    auto = _auto_approved(cfg, clean["email"])
    with store.transaction() as db:
        username = _free_username(store, cfg, clean["full_name"])
        state = APPROVED if auto and username else PENDING
        try:
            rid = store.insert(db, clean, state, username, client, source)
        except StoreError as exc:
            raise FormError({"email": str(exc)}) from None
        Store.log(db, rid, f"{source}:{client}", "submitted", f"username {username}")
        req = db.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
        ack = mail.acknowledgement(cfg, req)
        Store.queue_mail(db, rid, "acknowledgement", clean["email"], *ack)
        if state == APPROVED:
            Store.log(db, rid, "rule:auto_approve_domains", "approved", clean["email"])
        else:
            for admin in mail.admin_recipients(cfg):
                Store.queue_mail(db, rid, "admin-notice", admin, *mail.admin_notice(cfg, req))
    return rid


def approve(store: Store, cfg: dict, ident: str, actor: str, username: str | None = None) -> int:
    """pending -> approved, with the proposed or the admin's username."""
    req = store.find(str(ident))
    if req["state"] != PENDING:
        raise StoreError(f"request {req['id']} is {req['state']}, not pending")
    if username:
        names.check_override(username, _reserved(cfg))
        if _unix_taken(username):
            raise AccountInputError(f"username {username!r} is an existing account or group")
    else:
        username = req["username"]
        if username and _unix_taken(username):  # taken since the request came in
            username = _free_username(store, cfg, req["full_name"], req["id"])
        if not username:
            raise AccountInputError(
                f"request {req['id']}: no username can be made from {req['full_name']!r}; "
                "choose one (--username NAME)"
            )
    with store.transaction() as db:
        store.set_state(db, req["id"], (PENDING,), APPROVED, username=username, error=None)
        Store.log(db, req["id"], actor, "approved", f"username {username}")
    return req["id"]


def reject(store: Store, cfg: dict, ident: str, actor: str, reason: str = "") -> int:
    req = store.find(str(ident))
    with store.transaction() as db:
        store.set_state(db, req["id"], (PENDING,), REJECTED)
        Store.log(db, req["id"], actor, "rejected", reason)
        text = mail.rejection(cfg, req, reason)
        Store.queue_mail(db, req["id"], "rejection", req["email"], *text)
    return req["id"]


# --------------------------------------------------------------------------- provisioning


def _note(req) -> str:
    return f"scirepo request {req['id']}"


def _owned(req) -> bool:
    """Whether the Unix account named like the request was made for this request."""
    try:
        gecos = pwd.getpwnam(req["username"]).pw_gecos.split(",")
    except KeyError:
        return True  # no account yet
    return len(gecos) > 1 and gecos[1] == _note(req)


def _step(store: Store, cfg: dict, req) -> None:
    rid, username = req["id"], req["username"]
    if req["state"] == APPROVED:
        if not _owned(req):
            with store.transaction() as db:
                store.set_state(db, rid, (APPROVED,), PENDING,
                                error=f"username {username!r} was taken meanwhile")  # fmt: skip
                Store.log(db, rid, "provisioner", "sent back", f"{username} exists")
            return
        users.ensure_user(cfg, username, req["full_name"], req["email"],
                          expire_password=True, note=_note(req))  # fmt: skip
        if req["ssh_key"]:
            users.ensure_authorized_key(username, req["ssh_key"])
        _crash_point("useradd")
        uid = pwd.getpwnam(username).pw_uid
        with store.transaction() as db:
            store.set_state(db, rid, (APPROVED,), ACCOUNT_CREATED, error=None)
            Store.log(db, rid, "provisioner", "account created", f"{username} uid {uid}")
        _crash_point("account_created")
        req = store.get(rid)
    if req["state"] == ACCOUNT_CREATED:
        # A password set before a crash was never sent: a fresh one replaces it.
        password = users.generate_password()
        users.set_password(username, password, expire=True)
        _crash_point("password_set")
        with store.transaction() as db:
            store.set_state(db, rid, (ACCOUNT_CREATED,), ACTIVE)
            Store.log(db, rid, "provisioner", "temporary password set", "expires at first login")
            Store.queue_mail(db, rid, "welcome", req["email"], *mail.welcome(cfg, req),
                             secret=password)  # fmt: skip


def provision(store: Store, cfg: dict) -> int:
    """Carry every approved request through to an active account; return how many.

    One provisioner at a time (a lock file next to the database). A request that fails
    with a user error is sent back to pending with the error (an admin decides); any other
    failure is logged and retried at the next call."""
    done = 0
    with store.lock("provision") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for req in store.list(TODO_STATES):
            try:
                _step(store, cfg, req)
                done += 1
            except users.UserError as exc:
                log.error("request %d: %s", req["id"], exc)
                with store.transaction() as db:
                    store.set_state(db, req["id"], TODO_STATES, PENDING, error=str(exc))
                    Store.log(db, req["id"], "provisioner", "failed", str(exc))
    return done


def run_once(store: Store, cfg: dict, smtp: mail.Smtp | None = None) -> None:
    """Provision what is approved, then send what is queued."""
    provision(store, cfg)
    mail.deliver(store, smtp or mail.smtp_from_config(cfg), mail.sender(cfg))


# --------------------------------------------------------------------------- passwords


def check_new_password(cfg: dict, username: str, old: str, new: str, repeat: str) -> str | None:
    """Why `new` cannot be the new password, or None."""
    minimum = cfg["accounts"]["password_min_length"]
    if new != repeat:
        return "The two new passwords differ."
    if len(new) < minimum:
        return f"The new password is too short ({len(new)} characters, at least {minimum})."
    if len(new) > 512:
        return "The new password is too long (at most 512 characters)."
    if new == old:
        return "The new password must differ from the current one."
    if username.lower() in new.lower():
        return "The new password must not contain the username."
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in new):
        return "The new password must not contain control characters."
    if len(set(new)) < 5:
        return "The new password has too few different characters."
    return None


# --------------------------------------------------------------------------- offboarding


def _hub(cfg: dict, method: str, path: str) -> tuple[int, dict]:
    """Call the hub API with the service's token: (status, JSON answer); 404 is no error."""
    token = (Path(cfg["paths"]["secrets"]) / HUB_TOKEN).read_text().strip()
    req = urllib.request.Request(  # noqa: S310 - the hub on loopback
        f"{HUB_API}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            body = resp.read()
            return resp.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 404, {}
        raise


def stop_hub_user(cfg: dict, username: str) -> None:
    """Stop every server of `username` and delete the hub's record of the user (which ends
    the user's hub sessions). The Unix account is untouched."""
    if not (Path(cfg["paths"]["secrets"]) / HUB_TOKEN).exists():
        log.warning("no hub token: not stopping %s's servers", username)
        return
    status, model = _hub(cfg, "GET", f"/users/{username}")
    if status == 404:
        return
    for name in model.get("servers", {}):
        path = f"/users/{username}/servers/{name}" if name else f"/users/{username}/server"
        _hub(cfg, "DELETE", path)
    # The user record can only go once its servers have stopped.
    for _ in range(60):
        try:
            if _hub(cfg, "DELETE", f"/users/{username}")[0] in (204, 404):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 400:
                raise
        time.sleep(1)
    raise AccountInputError(f"the hub did not stop {username}'s servers within 60 s")


def disable(store: Store, cfg: dict, username: str, actor: str) -> None:
    """Lock `username` out of SSH and the hub and stop its servers; data stays."""
    users.validate_username(cfg, username)
    try:
        pwd.getpwnam(username)
    except KeyError:
        raise AccountInputError(f"no platform user {username!r}") from None
    req = store.db.execute(
        "SELECT * FROM requests WHERE username = ? AND state IN (?, ?)",
        (username, ACTIVE, DISABLED),
    ).fetchone()
    with store.transaction() as db:
        if req is not None and req["state"] == ACTIVE:
            store.set_state(db, req["id"], (ACTIVE,), DISABLED)
        Store.log(db, req["id"] if req else None, actor, "disabled", username)
    # Idempotent, so that `disable` again repairs a half-done one.
    group = cfg["users"]["group"]
    if username in grp.getgrnam(group).gr_mem:
        users._run(["gpasswd", "--delete", username, group])
    users._run(["usermod", "--lock", username])
    users._run(["chage", "--expiredate", "0", username])
    stop_hub_user(cfg, username)
    if cfg["accounts"]["offboarding"] == "archive":
        _archive(cfg, username)


def enable(store: Store, cfg: dict, username: str, actor: str) -> None:
    users.validate_username(cfg, username)
    req = store.db.execute(
        "SELECT * FROM requests WHERE username = ? AND state = ?", (username, DISABLED)
    ).fetchone()
    with store.transaction() as db:
        if req is not None:
            store.set_state(db, req["id"], (DISABLED,), ACTIVE)
        Store.log(db, req["id"] if req else None, actor, "enabled", username)
    users._run(["chage", "--expiredate", "-1", username])
    users._run(["usermod", "--unlock", username])
    _restore(cfg, username)
    account = pwd.getpwnam(username)
    users.ensure_user(cfg, username, account.pw_gecos.split(",")[0] or username,
                      account.pw_gecos.split(",")[-1] or cfg["site"]["contact_email"])  # fmt: skip


def _archive(cfg: dict, username: str) -> None:
    workspace = Path(cfg["paths"]["workspaces"]) / username
    if not workspace.is_dir() or workspace.is_symlink():
        return
    Path(ARCHIVE_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
    target = Path(ARCHIVE_DIR) / f"{username}.tar.gz"
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(workspace, arcname=username)
    os.replace(tmp, target)  # the archive is complete before the workspace goes
    subprocess.run(["rm", "-rf", "--one-file-system", str(workspace)], check=True)
    log.info("archived %s to %s", workspace, target)


def _restore(cfg: dict, username: str) -> None:
    archive = Path(ARCHIVE_DIR) / f"{username}.tar.gz"
    workspaces = Path(cfg["paths"]["workspaces"])
    if not archive.exists() or (workspaces / username).exists():
        return
    with tarfile.open(archive) as tar:
        tar.extractall(workspaces, filter="tar")
    archive.unlink()
    log.info("restored %s from %s", workspaces / username, archive)
