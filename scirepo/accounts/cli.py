"""`scirepo accounts ...`: review requests, offboard users, import a spreadsheet, serve.

On the host, as root. Every change is recorded with the acting Unix user (SUDO_USER or
the login name) as its actor; approvals are provisioned at once by the command itself,
and queued mails sent, so that no running service is needed for the CLI to finish a job.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import os
import sys

from scirepo import config as sconfig
from scirepo.accounts import flow, mail
from scirepo.accounts.names import AccountInputError
from scirepo.accounts.store import LIVE_STATES, REJECTED, Store, db_target
from scirepo.accounts.validate import validate_signup

log = logging.getLogger("scirepo.accounts")


def _site(args) -> dict:
    return sconfig.resolve(sconfig.load(sconfig.locate(args.config)))


def _actor() -> str:
    return f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}"


def _open(args) -> tuple[dict, Store]:
    cfg = _site(args)
    return cfg, Store(args.db or db_target(cfg))


def _finish(store: Store, cfg: dict) -> None:
    """Provision and send now; a mail failure is reported, never fatal (it is retried)."""
    flow.provision(store, cfg)
    try:
        mail.deliver(store, mail.smtp_from_config(cfg), mail.sender(cfg))
    except OSError as exc:
        log.warning("mail not sent yet (%s); the accounts service retries it", exc)


def _row(r) -> dict:
    return {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row iterates values


def cmd_list(args) -> int:
    _cfg, store = _open(args)
    states = tuple(args.state) if args.state else None
    rows = store.list(states)
    if args.json:
        print(json.dumps([_row(r) for r in rows], indent=1))
        return 0
    print(f"{'id':>4}  {'state':<15} {'username':<16} {'email':<32} name")
    for r in rows:
        print(f"{r['id']:>4}  {r['state']:<15} {r['username'] or '-':<16} {r['email']:<32} "
              f"{r['full_name']}")  # fmt: skip
    return 0


def cmd_show(args) -> int:
    _cfg, store = _open(args)
    req = store.find(args.request)
    data = _row(req)
    data["events"] = [_row(e) for e in store.events(req["id"])]
    data["mails"] = [
        {k: m[k] for k in ("id", "kind", "recipient", "state", "attempts", "last_error", "sent")}
        for m in store.mails(req["id"])
    ]
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    for key in ("id", "state", "username", "full_name", "email", "institution", "purpose",
                "ssh_key", "client", "source", "created", "updated", "error"):  # fmt: skip
        print(f"{key:>12}: {data[key] if data[key] is not None else ''}")
    print("history:")
    for e in data["events"]:
        print(f"  {e['at']}  {e['actor']:<24} {e['action']}  {e['detail']}")
    print("mails:")
    for m in data["mails"]:
        print(f"  {m['id']:>4} {m['kind']:<16} {m['recipient']:<32} {m['state']} "
              f"({m['attempts']} attempts) {m['last_error'] or ''}")  # fmt: skip
    return 0


def cmd_approve(args) -> int:
    cfg, store = _open(args)
    rid = flow.approve(store, cfg, args.request, _actor(), args.username)
    _finish(store, cfg)
    req = store.get(rid)
    print(f"request {rid}: {req['state']}, username {req['username']}")
    return 0 if req["state"] != "pending" else 1


def cmd_reject(args) -> int:
    cfg, store = _open(args)
    rid = flow.reject(store, cfg, args.request, _actor(), args.reason)
    _finish(store, cfg)
    print(f"request {rid}: rejected")
    return 0


def cmd_disable(args) -> int:
    cfg, store = _open(args)
    flow.disable(store, cfg, args.username, _actor())
    print(f"{args.username}: disabled (SSH and hub locked, servers stopped)")
    return 0


def cmd_enable(args) -> int:
    cfg, store = _open(args)
    flow.enable(store, cfg, args.username, _actor())
    print(f"{args.username}: enabled")
    return 0


def cmd_provision(args) -> int:
    cfg, store = _open(args)
    _finish(store, cfg)
    return 0


def cmd_mails(args) -> int:
    _cfg, store = _open(args)
    for m in store.mails():
        if args.all or m["state"] != "sent":
            print(f"{m['id']:>4} req {m['request_id'] or '-':>4} {m['kind']:<16} "
                  f"{m['recipient']:<32} {m['state']:<7} {m['attempts']} attempts  "
                  f"{m['last_error'] or ''}")  # fmt: skip
    return 0


def cmd_resend(args) -> int:
    cfg, store = _open(args)
    mail.requeue(store, args.mail, _actor())
    _finish(store, cfg)
    return 0


def cmd_import(args) -> int:
    """All rows are checked first; nothing is stored unless every row is valid (or
    --skip-invalid, which stores the valid ones and lists the others)."""
    cfg, store = _open(args)
    columns = cfg["accounts"]["import_columns"]
    with open(args.file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [
            c for k, c in columns.items() if k != "ssh_key" and c not in (reader.fieldnames or [])
        ]
        if missing:
            raise AccountInputError(
                f"{args.file}: missing column(s) {', '.join(missing)} (accounts.import_columns)"
            )
        rows = [{k: (row.get(c) or "") for k, c in columns.items()} for row in reader]
    problems, seen = [], set()
    for line, form in enumerate(rows, start=2):
        clean, errors = validate_signup(form, policy_required=False)
        email = clean.get("email", "").lower()
        if email and (email in seen or store.email_taken(email)):
            errors["email"] = "There is already an account or a request for this email."
        seen.add(email)
        if errors:
            problems.append(f"line {line}: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    if problems and not args.skip_invalid:
        raise AccountInputError(
            "\n".join([f"{args.file}: {len(problems)} invalid row(s), nothing imported", *problems])
        )
    bad = {p.split(":")[0] for p in problems}
    imported = 0
    for line, form in enumerate(rows, start=2):
        if f"line {line}" in bad:
            continue
        flow.submit(store, cfg, form, args.file, source="import", policy_required=False)
        imported += 1
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    print(f"imported {imported} request(s) as pending from {args.file}")
    return 0


def cmd_serve(args) -> int:
    from scirepo.accounts import web

    cfg = _site(args)
    logging.getLogger().setLevel(logging.INFO)
    asyncio.run(web.serve(cfg, args.port or cfg["accounts"]["port"]))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "accounts", help="signup requests, approval, offboarding (on the host, as root)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name, func, help_text):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        sub.add_argument("--db", metavar="FILE", help="the SQLite database (default: config)")
        sub.set_defaults(func=func)
        return sub

    sub = add("list", cmd_list, "list requests")
    sub.add_argument("--state", action="append", choices=[*LIVE_STATES, REJECTED])
    sub.add_argument("--json", action="store_true")
    sub = add("show", cmd_show, "one request with its history and mails")
    sub.add_argument("request", help="request id or username")
    sub.add_argument("--json", action="store_true")
    sub = add("approve", cmd_approve, "approve a pending request and create the account now")
    sub.add_argument("request", help="request id or username")
    sub.add_argument("--username", help="use this username instead of the proposed one")
    sub = add("reject", cmd_reject, "reject a pending request (the applicant gets a mail)")
    sub.add_argument("request", help="request id or username")
    sub.add_argument("--reason", default="", help="told to the applicant")
    sub = add("disable", cmd_disable, "lock a user out of SSH and the hub; data is kept")
    sub.add_argument("username")
    sub = add("enable", cmd_enable, "undo disable")
    sub.add_argument("username")
    add("provision", cmd_provision, "finish approved requests and send queued mail now")
    sub = add("mails", cmd_mails, "list mails not yet sent (--all: every mail)")
    sub.add_argument("--all", action="store_true")
    sub = add("resend", cmd_resend, "queue a mail again (e.g. after it failed)")
    sub.add_argument("mail", type=int)
    sub = add("import", cmd_import, "import a CSV export of a signup form as pending requests")
    sub.add_argument("file")
    sub.add_argument("--skip-invalid", action="store_true", help="import the valid rows only")
    sub = add("serve", cmd_serve, "run the web service and the provisioner (systemd)")
    sub.add_argument("--port", type=int, help="loopback port (default: accounts.port)")
