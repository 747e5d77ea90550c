"""The platform's emails: their texts, and the queue that sends them over SMTP.

Mails are rows of the accounts database (`Store.queue_mail`), queued in the transaction
that makes them due, and sent by `deliver`: a failure is recorded on the row and retried
with a growing delay, and after MAX_ATTEMPTS the row stays `failed`, visible to admins
(`scirepo accounts mails`, the review page) until `scirepo accounts resend` queues it
again. The account itself never depends on a mail. A welcome mail's temporary password
lives in the row's `secret` column until the SMTP server has accepted the mail.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from scirepo.accounts.store import Store, StoreError, now

log = logging.getLogger("scirepo.accounts.mail")

MAX_ATTEMPTS = 8
BASE_DELAY = 30.0  # seconds before the first retry; doubled each time, at most MAX_DELAY
MAX_DELAY = 3600.0
# File names on the host, under paths.secrets and paths.etc.
SMTP_PASSWORD, SMTP_CA = "smtp_password", "smtp-ca.crt"
PASSWORD_MARK = "@@TEMPORARY-PASSWORD@@"  # noqa: S105 - replaced by the secret when the mail is sent


class Smtp:
    """How to reach the SMTP server (accounts.smtp of the site config)."""

    def __init__(self, host: str, port: int, security: str = "none", username: str = "",
                 password: str = "", ca_file: str = "", timeout: float = 20.0) -> None:  # fmt: skip
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"accounts.smtp.security: unknown value {security!r}")
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        self.ca_file, self.timeout = ca_file, timeout

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)

    def send(self, msg: EmailMessage) -> None:
        """Hand `msg` to the server; raises OSError or smtplib.SMTPException on failure."""
        if self.security == "tls":
            client = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context()
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with client:
            client.ehlo()
            if self.security == "starttls":
                client.starttls(context=self._context())
                client.ehlo()
            if self.username:
                client.login(self.username, self.password)
            client.send_message(msg)


def smtp_from_config(cfg: dict) -> Smtp:
    """The SMTP settings on the host: the deploy copies accounts.smtp.password_file and
    ca_file to fixed places there (SMTP_PASSWORD, SMTP_CA)."""
    smtp = cfg["accounts"]["smtp"]
    password = ""
    if smtp["username"]:
        with open(f"{cfg['paths']['secrets']}/{SMTP_PASSWORD}") as fh:
            password = fh.read().strip()
    ca_file = f"{cfg['paths']['etc']}/{SMTP_CA}" if smtp["ca_file"] else ""
    return Smtp(smtp["host"], smtp["port"], smtp["security"], smtp["username"], password, ca_file)


def sender(cfg: dict) -> str:
    address = cfg["accounts"]["mail_from"] or cfg["site"]["contact_email"]
    return address if "<" in address else formataddr((cfg["site"]["name"], address))


def admin_recipients(cfg: dict) -> list[str]:
    return cfg["accounts"]["admin_emails"] or [cfg["site"]["contact_email"]]


# --------------------------------------------------------------------------- texts


def _hub_url(cfg: dict) -> str:
    return f"https://{cfg['site']['hostname']}/"


def acknowledgement(cfg: dict, req) -> tuple[str, str]:
    site = cfg["site"]
    return (
        f"Your account request for {site['name']} was received",
        f"Dear {req['full_name']},\n\n"
        f"we have received your request for an account on {site['name']} "
        f"(request {req['id']}). An administrator will review it; you will get another "
        "email when your account is ready.\n\n"
        f"If you did not ask for an account, please tell us: {site['contact_email']}\n",
    )


def admin_notice(cfg: dict, req) -> tuple[str, str]:
    site = cfg["site"]
    return (
        f"New account request {req['id']} on {site['name']}: {req['full_name']}",
        f"A new account request waits for review.\n\n"
        f"  Request:     {req['id']}\n"
        f"  Name:        {req['full_name']}\n"
        f"  Email:       {req['email']}\n"
        f"  Institution: {req['institution']}\n"
        f"  Username:    {req['username'] or '(to be chosen by an admin)'}\n\n"
        f"Purpose:\n{req['purpose']}\n\n"
        f"Review it at {_hub_url(cfg)}accounts/admin or on the host with\n"
        f"  scirepo accounts show {req['id']}\n"
        f"  scirepo accounts approve {req['id']}    (or: reject {req['id']})\n",
    )


def welcome(cfg: dict, req) -> tuple[str, str]:
    site, ssh = cfg["site"], cfg["ssh"]
    port = "" if ssh["port"] == 22 else f"-p {ssh['port']} "
    return (
        f"Your account on {site['name']} is ready",
        f"Dear {req['full_name']},\n\n"
        f"your account on {site['name']} is ready.\n\n"
        f"  Username:           {req['username']}\n"
        f"  Temporary password: {PASSWORD_MARK}\n\n"
        "You must choose a new password at your first login; the temporary one then stops "
        "working.\n\n"
        f"SSH:         ssh {port}{req['username']}@{site['hostname']}\n"
        "             (you are asked for the temporary password, then for a new one twice)\n"
        f"JupyterLab:  {_hub_url(cfg)}hub/login\n"
        "             (after logging in with the temporary password you are taken to a page\n"
        "             where you set the new one)\n"
        f"Password:    {_hub_url(cfg)}accounts/password (to change it later)\n\n"
        "The new password is the same for SSH and JupyterLab. Your files are in "
        "~/workspace.\n\n"
        f"Questions: {site['contact_email']}\n",
    )


def rejection(cfg: dict, req, reason: str) -> tuple[str, str]:
    site = cfg["site"]
    why = f"\nThe administrators gave this reason:\n  {reason}\n" if reason else ""
    return (
        f"Your account request for {site['name']}",
        f"Dear {req['full_name']},\n\n"
        f"your request for an account on {site['name']} (request {req['id']}) was not "
        f"approved.\n{why}\nIf you think this is a mistake, write to {site['contact_email']}.\n",
    )


# --------------------------------------------------------------------------- delivery


def _message(row, from_addr: str, host: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = row["recipient"]
    msg["Subject"] = row["subject"]
    msg["Message-ID"] = make_msgid(idstring=f"scirepo-mail-{row['id']}", domain=host)
    msg["X-Scirepo-Mail"] = f"{row['kind']} {row['id']}"
    body = row["body"]
    if row["secret"]:
        body = body.replace(PASSWORD_MARK, row["secret"])
    msg.set_content(body)
    return msg


def _retry_at(attempts: int, base: float) -> str:
    delay = min(base * 2 ** (attempts - 1), MAX_DELAY)
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)).isoformat(
        timespec="milliseconds"
    )


def deliver(store: Store, smtp: Smtp, from_addr: str, base_delay: float = BASE_DELAY) -> int:
    """Send every queued mail that is due; return how many were sent.

    One deliverer at a time (a lock file next to the database), so a mail is not sent
    twice by the service and a command running at once.
    """
    sent = 0
    with store.lock("mail") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = store.db.execute(
            "SELECT * FROM mails WHERE state = 'queued' AND next_try <= ? ORDER BY id", (now(),)
        ).fetchall()
        for row in rows:
            try:
                smtp.send(_message(row, from_addr, socket.getfqdn()))
            except (OSError, smtplib.SMTPException) as exc:
                attempts = row["attempts"] + 1
                state = "failed" if attempts >= MAX_ATTEMPTS else "queued"
                error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("mail %d to %s: attempt %d failed: %s", row["id"],
                            row["recipient"], attempts, error)  # fmt: skip
                with store.transaction() as db:
                    db.execute(
                        "UPDATE mails SET attempts = ?, state = ?, last_error = ?, next_try = ?"
                        " WHERE id = ?",
                        (attempts, state, error, _retry_at(attempts, base_delay), row["id"]),
                    )
                    if state == "failed":
                        Store.log(db, row["request_id"], "mailer", "mail failed",
                                  f"{row['kind']} to {row['recipient']}: {error}")  # fmt: skip
                continue
            with store.transaction() as db:
                db.execute(
                    "UPDATE mails SET state = 'sent', sent = ?, secret = NULL,"
                    " attempts = attempts + 1, last_error = NULL WHERE id = ?",
                    (now(), row["id"]),
                )
                Store.log(db, row["request_id"], "mailer", "mail sent",
                          f"{row['kind']} to {row['recipient']}")  # fmt: skip
            sent += 1
    return sent


def requeue(store: Store, mail_id: int, actor: str) -> None:
    """Queue a failed (or sent) mail again, due now."""
    with store.transaction() as db:
        row = db.execute("SELECT * FROM mails WHERE id = ?", (mail_id,)).fetchone()
        if row is None:
            raise StoreError(f"no mail with id {mail_id}")
        db.execute(
            "UPDATE mails SET state = 'queued', attempts = 0, next_try = ? WHERE id = ?",
            (now(), mail_id),
        )
        Store.log(db, row["request_id"], actor, "mail requeued", f"{row['kind']} {mail_id}")
