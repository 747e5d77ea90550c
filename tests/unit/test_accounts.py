"""The accounts flow with real Unix accounts (useradd, needs root) and a real SMTP server
(aiosmtpd on loopback), whose delivered mails the tests read.

Accounts get uids 64100-64199 and surnames of random letters; a finalizer deletes every
account in that range. The crash tests kill a real `scirepo accounts` process with SIGKILL
at each step (SCIREPO_ACCOUNTS_CRASH_AFTER) and run it again.
"""

from __future__ import annotations

import csv
import email
import grp
import os
import pwd
import secrets
import shutil
import smtplib
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from scirepo import config
from scirepo.accounts import flow, mail
from scirepo.accounts.store import ACTIVE, PENDING, REJECTED, Store, StoreError, db_target

UID_MIN, UID_MAX = 64100, 64199
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd)")


class Inbox:
    """aiosmtpd handler keeping every delivered message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str, kind: str | None = None) -> list:
        return [
            m
            for m in self.messages
            if m["To"] == address and (kind is None or m["X-Scirepo-Mail"].startswith(kind))
        ]


@pytest.fixture
def smtp():
    inbox = Inbox()
    with socket.socket() as probe:  # a free port (aiosmtpd checks readiness by connecting)
        probe.bind(("127.0.0.1", 0))
        inbox.port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    yield inbox
    controller.stop()


def surname() -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(8)).capitalize()


PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's) on a Unix socket in a private directory, run as
    the postgres user; yields a function that creates a fresh database and returns its URL."""
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.fail("Debian's postgresql is missing: scripts/bootstrap installs it")
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as the postgres user needs root")
    base = tempfile.mkdtemp(prefix="scirepo-pg-")
    shutil.chown(base, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    data = f"{base}/data"
    # cwd: runuser keeps root's working directory, which postgres may not enter.
    initdb = [f"{PG_BIN}/initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-D", data]
    subprocess.run([*as_pg, *initdb], check=True, capture_output=True, cwd=base)
    subprocess.run(
        [*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-l", f"{base}/log", "-w", "-o",
         f"-k {base} -c listen_addresses=''", "start"],
        check=True, capture_output=True, cwd=base,
    )  # fmt: skip

    def new_database() -> str:
        name = f"accounts_{secrets.token_hex(4)}"
        create = ["psql", "-q", "-h", base, "-c", f"CREATE DATABASE {name}"]
        subprocess.run([*as_pg, *create], check=True, capture_output=True, cwd=base)
        return f"postgresql://postgres@/{name}?host={base}"

    yield new_database
    subprocess.run([*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                   capture_output=True, check=False)  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """The accounts database URL: every test of the flow runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/accounts.db"
    return request.getfixturevalue("postgres")()


@pytest.fixture
def site(tmp_path, smtp, database):
    """(cfg, store, config file): a site with the test SMTP server and its own database."""
    data = {
        "site": {"name": "Test Repository", "contact_email": "help@example.org"},
        "users": {
            "group": f"sra{secrets.token_hex(3)}",
            "uid_min": UID_MIN,
            "uid_max": UID_MAX,
            "home_root": str(tmp_path / "home"),
            "admins": ["sradmin"],
        },
        "storage": {"root": str(tmp_path / "srv")},
        "accounts": {
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "admin_emails": ["admins@example.org"],
            "auto_approve_domains": ["trusted.example"],
            "database": database,
        },
    }
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = config.resolve(config.validate(data))
    store = Store(db_target(cfg), lock_dir=tmp_path)
    yield cfg, store, path
    store.close()
    # Only this test's accounts (homes under its tmp_path): another test session may be
    # using the same uid range at the same time.
    for entry in pwd.getpwall():
        if UID_MIN <= entry.pw_uid <= UID_MAX and entry.pw_dir.startswith(str(tmp_path)):
            subprocess.run(["userdel", entry.pw_name], capture_output=True, check=False)
            subprocess.run(["groupdel", entry.pw_name], capture_output=True, check=False)
    subprocess.run(["groupdel", data["users"]["group"]], capture_output=True, check=False)


def form(**over) -> dict:
    base = {
        "full_name": f"Nicolò {surname()}",
        "email": f"{secrets.token_hex(4)}@uni.example",
        "institution": "University of Examples",
        "purpose": "Analysing broadband waveforms of station A.",
        "ssh_key": "",
        "policy": "on",
        "website": "",
    }
    return {**base, **over}


def deliver(cfg, store):
    return mail.deliver(store, mail.smtp_from_config(cfg), mail.sender(cfg), base_delay=0)


def password_matches(name: str, password: str) -> bool:
    with open("/etc/shadow") as fh:
        stored = next(line.split(":") for line in fh if line.startswith(name + ":"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, stored[1]) == stored[1], stored[2]


def welcome_password(message) -> str:
    body = message.get_payload(decode=True).decode()
    return next(line.split(":", 1)[1].strip() for line in body.splitlines()
                if "Temporary password:" in line)  # fmt: skip


def cli(config_path, *argv, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "scirepo", "--config", str(config_path), "accounts", *argv],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


# --------------------------------------------------------------------------- submission


def test_submission_is_stored_acknowledged_and_admins_notified(site, smtp):
    cfg, store, _ = site
    f = form()
    rid = flow.submit(store, cfg, f, "192.0.2.7")
    req = store.get(rid)
    assert req["state"] == PENDING
    assert req["username"] == "n" + f["full_name"].split()[1].lower()
    assert deliver(cfg, store) == 2
    (ack,) = smtp.to(f["email"], "acknowledgement")
    assert f"request {rid}" in ack.get_payload()
    (notice,) = smtp.to("admins@example.org", "admin-notice")
    assert f["full_name"] in notice.get_payload(decode=True).decode()
    assert [e["action"] for e in store.events(rid)] == ["submitted", "mail sent", "mail sent"]


def test_duplicate_email_is_refused(site):
    cfg, store, _ = site
    f = form()
    flow.submit(store, cfg, f, "c")
    with pytest.raises(flow.FormError) as err:
        flow.submit(store, cfg, form(email=f["email"].upper()), "c")
    assert "already" in err.value.errors["email"]
    assert len(store.list()) == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("full_name", "Ro$bert; rm -rf / `id`"),
        ("full_name", "x" * 300),
        ("email", "'; DROP TABLE requests; --@example.org"),
        ("email", "not-an-address"),
        ("institution", "i" * 300),
        ("purpose", "p" * 3000),
        ("ssh_key", "ssh-ed25519 AAAAnotbase64!!! me@host"),
        ("ssh_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("policy", ""),
        ("full_name", "Jo\x00hn Doe"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(site, field, value):
    cfg, store, _ = site
    with pytest.raises(flow.FormError) as err:
        flow.submit(store, cfg, form(**{field: value}), "c")
    assert field in err.value.errors and err.value.errors[field]
    assert store.list() == [] and store.mails() == []


def test_sql_and_shell_text_is_kept_verbatim(site):
    cfg, store, _ = site
    purpose = "'; DROP TABLE requests; -- $(reboot) `id` | tee /etc/passwd"
    rid = flow.submit(store, cfg, form(purpose=purpose, institution="O'Brien & Sons; --"), "c")
    assert store.get(rid)["purpose"] == purpose
    assert store.get(rid)["institution"] == "O'Brien & Sons; --"


def test_name_without_latin_letters_waits_for_an_admin_username(site):
    cfg, store, _ = site
    rid = flow.submit(store, cfg, form(full_name="Иван Петров"), "c")
    assert store.get(rid)["username"] is None
    with pytest.raises(flow.AccountInputError, match="choose one"):
        flow.approve(store, cfg, str(rid), "test")
    assert store.get(rid)["state"] == PENDING


# --------------------------------------------------------------------------- provisioning


@needs_root
def test_approval_creates_the_account_and_mails_a_working_expired_password(site, smtp, tmp_path):
    cfg, store, _ = site
    key_file = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key_file], check=True)
    pub = key_file.with_suffix(".pub").read_text().strip()
    f = form(ssh_key=pub)
    rid = flow.submit(store, cfg, f, "c")
    flow.approve(store, cfg, str(rid), "admin:sradmin")
    assert flow.provision(store, cfg) == 1
    deliver(cfg, store)
    req = store.get(rid)
    name = req["username"]
    assert req["state"] == ACTIVE
    account = pwd.getpwnam(name)
    assert UID_MIN <= account.pw_uid <= UID_MAX
    assert name in grp.getgrnam(cfg["users"]["group"]).gr_mem
    assert os.readlink(os.path.join(account.pw_dir, "workspace")).endswith(f"/workspaces/{name}")
    keys = os.path.join(account.pw_dir, ".ssh", "authorized_keys")
    assert Path(keys).read_text().strip() == " ".join(pub.split()[:3])
    assert os.stat(keys).st_uid == account.pw_uid and os.stat(keys).st_mode & 0o777 == 0o600
    (welcome,) = smtp.to(f["email"], "welcome")
    password = welcome_password(welcome)
    ok, lastchg = password_matches(name, password)
    assert ok and lastchg == "0"  # must be changed at first login
    assert store.mails(rid)[-1]["secret"] is None  # forgotten once sent
    actions = [e["action"] for e in store.events(rid)]
    assert actions[:4] == ["submitted", "approved", "account created", "temporary password set"]


@needs_root
def test_admin_username_override_and_collision_suffix(site):
    cfg, store, _ = site
    last = surname()
    first = flow.submit(store, cfg, form(full_name=f"Anna {last}"), "c")
    second = flow.submit(store, cfg, form(full_name=f"Albert {last}"), "c")
    assert store.get(second)["username"] == store.get(first)["username"] + "2"
    flow.approve(store, cfg, str(first), "t", username="chosen" + last.lower()[:6])
    flow.provision(store, cfg)
    assert pwd.getpwnam("chosen" + last.lower()[:6])


@needs_root
def test_signing_up_as_an_existing_user_never_grants_that_account(site, tmp_path):
    cfg, store, _ = site
    last = surname()
    flow.submit(store, cfg, form(full_name=f"Sam {last}"), "c")
    victim = "s" + last.lower()
    home = tmp_path / "victim-home"  # under tmp_path: the site fixture removes it
    subprocess.run(["useradd", "--uid", str(UID_MAX), "-M", "-d", str(home), victim], check=True)
    # The name was free at submission and is taken now: approval picks another one.
    rid = store.list()[0]["id"]
    flow.approve(store, cfg, str(rid), "t")
    flow.provision(store, cfg)
    assert store.get(rid)["username"] == victim + "2"
    assert pwd.getpwnam(victim).pw_gecos == ""  # untouched
    with pytest.raises(flow.AccountInputError, match="existing account"):
        flow.approve(store, cfg, str(flow.submit(store, cfg, form(), "c")), "t", username=victim)


@needs_root
def test_reject_mails_the_applicant_and_creates_nothing(site, smtp):
    cfg, store, _ = site
    f = form()
    rid = flow.submit(store, cfg, f, "c")
    flow.reject(store, cfg, str(rid), "admin:sradmin", "not a member of the collaboration")
    deliver(cfg, store)
    assert store.get(rid)["state"] == REJECTED
    (msg,) = smtp.to(f["email"], "rejection")
    assert "not a member of the collaboration" in msg.get_payload()
    with pytest.raises(KeyError):
        pwd.getpwnam(store.get(rid)["username"])
    with pytest.raises(StoreError, match="rejected, not pending"):
        flow.approve(store, cfg, str(rid), "t")


@needs_root
def test_auto_approved_domain_needs_no_admin(site, smtp):
    cfg, store, _ = site
    rid = flow.submit(store, cfg, form(email="x@mail.trusted.example"), "c")
    assert store.get(rid)["state"] == "approved"
    flow.run_once(store, cfg, mail.smtp_from_config(cfg))
    assert store.get(rid)["state"] == ACTIVE
    assert not smtp.to("admins@example.org")


@needs_root
@pytest.mark.parametrize("step", ["useradd", "account_created", "password_set"])
def test_killed_provisioner_finishes_with_one_user_and_one_mail(site, smtp, step):
    cfg, store, path = site
    f = form()
    rid = flow.submit(store, cfg, f, "c")
    crashed = cli(path, "approve", str(rid), env_extra={flow.CRASH_ENV: step})
    assert crashed.returncode == -9, crashed.stderr
    name = store.get(rid)["username"]
    assert pwd.getpwnam(name)  # useradd happened before the kill
    assert not smtp.to(f["email"], "welcome")
    again = cli(path, "provision")
    assert again.returncode == 0, again.stderr
    assert store.get(rid)["state"] == ACTIVE
    assert [p.pw_name for p in pwd.getpwall() if p.pw_gecos.endswith(f["email"])] == [name]
    (welcome,) = smtp.to(f["email"], "welcome")
    assert password_matches(name, welcome_password(welcome))[0]
    assert cli(path, "provision").returncode == 0
    assert len(smtp.to(f["email"], "welcome")) == 1


@needs_root
def test_mail_failure_is_retried_and_never_loses_the_account(site, smtp, tmp_path):
    cfg, store, _ = site
    f = form()
    rid = flow.submit(store, cfg, f, "c")
    flow.approve(store, cfg, str(rid), "t")
    down = mail.Smtp("127.0.0.1", 1)  # nothing listens there
    flow.provision(store, cfg)
    assert mail.deliver(store, down, mail.sender(cfg), base_delay=0) == 0
    queued = store.mails(rid)
    assert all(m["state"] == "queued" and m["attempts"] == 1 for m in queued)
    assert "refused" in queued[0]["last_error"].lower()
    assert store.get(rid)["state"] == ACTIVE
    deliver(cfg, store)  # the server is back
    assert len(smtp.to(f["email"], "welcome")) == 1
    assert welcome_password(smtp.to(f["email"], "welcome")[0])


def test_a_mail_that_keeps_failing_is_marked_failed_and_can_be_requeued(site, smtp):
    cfg, store, _ = site
    rid = flow.submit(store, cfg, form(), "c")
    down = mail.Smtp("127.0.0.1", 1)
    for _ in range(mail.MAX_ATTEMPTS):
        mail.deliver(store, down, mail.sender(cfg), base_delay=0)
    failed = [m for m in store.mails(rid) if m["state"] == "failed"]
    assert len(failed) == 2
    assert "mail failed" in [e["action"] for e in store.events(rid)]
    mail.requeue(store, failed[0]["id"], "t")
    assert deliver(cfg, store) == 1


@needs_root
def test_disable_locks_and_enable_restores(site):
    cfg, store, path = site
    rid = flow.submit(store, cfg, form(), "c")
    flow.approve(store, cfg, str(rid), "t")
    flow.provision(store, cfg)
    name = store.get(rid)["username"]
    assert cli(path, "disable", name).returncode == 0
    assert name not in grp.getgrnam(cfg["users"]["group"]).gr_mem
    shadow = subprocess.run(["getent", "shadow", name], capture_output=True, text=True).stdout
    assert shadow.split(":")[1].startswith("!") and shadow.split(":")[7] == "0"
    assert store.get(rid)["state"] == "disabled"
    assert os.path.isdir(os.path.join(cfg["paths"]["workspaces"], name))  # kept
    assert cli(path, "enable", name).returncode == 0
    assert name in grp.getgrnam(cfg["users"]["group"]).gr_mem
    shadow = subprocess.run(["getent", "shadow", name], capture_output=True, text=True).stdout
    assert not shadow.split(":")[1].startswith("!") and shadow.split(":")[7] == ""
    assert store.get(rid)["state"] == ACTIVE


# --------------------------------------------------------------------------- CLI


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Full name", "Email", "Institution", "Purpose", "Timestamp"])
        w.writerows(rows)


def test_import_is_all_or_nothing_unless_told(site, tmp_path):
    cfg, store, path = site
    good = [f"Jane {surname()}", "jane@uni.example", "Uni", "Waveform analysis for a thesis", "x"]
    bad = ["Rob; rm -rf /", "rob@uni.example", "Uni", "Something long enough", "x"]
    sheet = tmp_path / "export.csv"
    write_csv(sheet, [good, bad])
    result = cli(path, "import", sheet)
    assert result.returncode == 2
    assert "line 3" in result.stderr and "nothing imported" in result.stderr
    assert store.list() == []
    result = cli(path, "import", sheet, "--skip-invalid")
    assert result.returncode == 0, result.stderr
    (req,) = store.list()
    assert req["email"] == "jane@uni.example" and req["source"] == "import"


def test_import_names_a_missing_column(site, tmp_path):
    _cfg, store, path = site
    sheet = tmp_path / "export.csv"
    sheet.write_text("Name,Email\nJane Doe,jane@uni.example\n")
    result = cli(path, "import", sheet)
    assert result.returncode == 2 and "missing column(s) Full name" in result.stderr


def test_list_and_show(site):
    cfg, store, path = site
    rid = flow.submit(store, cfg, form(), "c")
    listed = cli(path, "list")
    assert listed.returncode == 0 and store.get(rid)["email"] in listed.stdout
    shown = cli(path, "show", str(rid))
    assert "submitted" in shown.stdout and "acknowledgement" in shown.stdout
    assert cli(path, "show", "999").returncode == 2


@pytest.mark.parametrize(
    "new,repeat,problem",
    [
        ("short", "short", "too short"),
        ("a-long-enough-password", "another-long-password", "differ"),
        ("OLD-password-123", "OLD-password-123", "differ from the current"),
        ("jdoe-is-my-password", "jdoe-is-my-password", "username"),
        ("aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "different characters"),
    ],
)
def test_new_password_rules(site, new, repeat, problem):
    cfg, _store, _ = site
    assert problem in flow.check_new_password(cfg, "jdoe", "OLD-password-123", new, repeat)
    assert flow.check_new_password(cfg, "jdoe", "old", "Fine-Pass-4-me!", "Fine-Pass-4-me!") is None


def test_opening_an_existing_database_leaves_the_file_to_sqlite(tmp_path, monkeypatch):
    """Closing any other descriptor of an open SQLite file drops the process's POSIX locks
    on it (the service opens a second Store in its worker thread): only a missing file may
    be created outside sqlite."""
    path = tmp_path / "a.db"
    Store(path).close()
    opened, real_open = [], os.open
    monkeypatch.setattr(
        os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1]
    )
    Store(path).close()
    assert str(path) not in opened
    assert os.stat(path).st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- SMTP security


@pytest.fixture
def tls_pair(tmp_path):
    key, cert = tmp_path / "smtp.key", tmp_path / "smtp.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, str(cert)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _login_checker(seen: list):
    def check(server, session, envelope, mechanism, auth_data):
        seen.append((auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (b"mailer", b"s3cret-pass")
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    return check


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_mail_over_starttls_or_tls_with_login(tls_pair, security):
    ctx, ca_file = tls_pair
    inbox, logins, port = Inbox(), [], _free_port()
    if security == "starttls":
        kwargs = {"tls_context": ctx, "require_starttls": True}
    else:  # implicit TLS: aiosmtpd does not count it as TLS for AUTH, so allow AUTH anyway
        kwargs = {"ssl_context": ctx, "auth_require_tls": False}
    controller = Controller(inbox, hostname="127.0.0.1", port=port, auth_required=True,
                            authenticator=_login_checker(logins), **kwargs)  # fmt: skip
    controller.start()
    try:
        msg = mail.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "hello"
        msg.set_content("body")
        mail.Smtp("127.0.0.1", port, security, "mailer", "s3cret-pass", ca_file).send(msg)
        assert [m["Subject"] for m in inbox.messages] == ["hello"]
        assert logins == [(b"mailer", b"s3cret-pass")]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            mail.Smtp("127.0.0.1", port, security, "mailer", "wrong", ca_file).send(msg)
        with pytest.raises(ssl.SSLCertVerificationError):  # not the server's CA
            mail.Smtp("127.0.0.1", port, security, "mailer", "s3cret-pass").send(msg)
    finally:
        controller.stop()
    assert len(inbox.messages) == 1


@needs_root
def test_archive_offboarding_moves_the_workspace_and_enable_brings_it_back(
    site, monkeypatch, tmp_path
):
    cfg, store, _ = site
    cfg["accounts"]["offboarding"] = "archive"
    monkeypatch.setattr(flow, "ARCHIVE_DIR", str(tmp_path / "archive"))
    rid = flow.submit(store, cfg, form(), "c")
    flow.approve(store, cfg, str(rid), "t")
    flow.provision(store, cfg)
    name = store.get(rid)["username"]
    workspace = Path(cfg["paths"]["workspaces"]) / name
    (workspace / "results.csv").write_text("1,2,3\n")
    flow.disable(store, cfg, name, "t")
    assert not workspace.exists()
    assert (tmp_path / "archive" / f"{name}.tar.gz").exists()
    flow.enable(store, cfg, name, "t")
    assert (workspace / "results.csv").read_text() == "1,2,3\n"
    assert workspace.stat().st_uid == pwd.getpwnam(name).pw_uid
    assert not (tmp_path / "archive" / f"{name}.tar.gz").exists()
