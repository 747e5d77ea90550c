"""Benchmark of the accounts service on the local host (after `make up`).

Not a test: it prints a table and writes build/bench/accounts.json. Per round:

- submission: POST of the signup form through nginx until the "received" page is back
  (the request and its mails are in the database by then);
- approval to SSH login: from the admin's approval until paramiko has logged in with the
  temporary password read from the welcome mail in the local mail catcher, for both ways
  an admin approves:
  - web: POST on the review page (the admin logged in through the hub), which wakes the
    service's provisioner;
  - cli: `scirepo accounts approve ID` on the host (through `docker exec`, which adds its
    own start-up time).

    .venv/bin/python bench/accounts.py --site site.yml --rounds 5

Target (issue 4): approval to a working SSH login under 2 s.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paramiko  # noqa: E402
import requests  # noqa: E402

from scirepo import config as siteconfig  # noqa: E402
from scirepo import deploy, mailcatcher, tls  # noqa: E402
from scirepo.dockercli import DOCKER  # noqa: E402
from scirepo.hubclient import HubUser  # noqa: E402

OUT = REPO / "build" / "bench" / "accounts.json"
TARGET = 2.0


def on_host(cfg: dict, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER, "exec", cfg["local"]["container"], *cmd], capture_output=True, text=True
    )


def xsrf_of(html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)


def welcome_for(email: str, timeout: float = 30) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in mailcatcher.messages():
            if msg["To"] == email and msg["X-Scirepo-Mail"].startswith("welcome"):
                body = msg.get_payload(decode=True).decode()
                fields = dict(
                    line.strip().split(":", 1) for line in body.splitlines()
                    if line.strip().startswith(("Username:", "Temporary password:"))
                )  # fmt: skip
                return fields["Username"].strip(), fields["Temporary password"].strip()
        time.sleep(0.02)
    raise SystemExit(f"no welcome mail to {email} within {timeout} s")


def ssh_login(cfg: dict, user: str, password: str) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - local host
    client.connect(
        "127.0.0.1", port=cfg["local"]["ssh_port"], username=user, password=password,
        allow_agent=False, look_for_keys=False, timeout=20,
    )  # fmt: skip
    client.close()


def admin_session(cfg: dict, url: str, cafile: str) -> requests.Session:
    admin = cfg["users"]["admins"][0]
    text = (deploy.CREDENTIALS / cfg["local"]["container"] / f"admin-{admin}").read_text()
    password = re.search(r"^password: (.+)$", text, re.M).group(1)
    hub = HubUser(url, admin, cafile=cafile)
    if not hub.login(password):
        raise SystemExit(f"cannot log in as {admin}: has its password been changed?")
    page = hub.session.get(f"{url}/accounts/admin", verify=cafile, timeout=30)
    if "Account requests" not in page.text:
        raise SystemExit("the review page did not open for the admin")
    return hub.session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default="site.yml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = siteconfig.resolve(siteconfig.load(Path(args.site)))
    url, cafile = f"https://localhost:{cfg['local']['https_port']}", str(tls.CA_CERT)
    # Every round comes from this machine's address: the limit is per client per hour.
    on_host(cfg, "systemctl", "restart", "scirepo-accounts")
    time.sleep(1.5)
    admin = admin_session(cfg, url, cafile)
    applicant = requests.Session()
    figures: dict[str, list[float]] = {"submission": [], "web": [], "cli": []}
    made = []
    rounds = min(args.rounds, cfg["accounts"]["rate_limit"] // 2 * 2 or 1)
    try:
        for i in range(rounds):
            way = "web" if i % 2 == 0 else "cli"
            surname = "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))
            email = f"bench-{surname}@uni.example"
            form = applicant.get(f"{url}/accounts/", verify=cafile, timeout=30)
            data = {
                "full_name": f"Bench {surname.capitalize()}",
                "email": email,
                "institution": "Benchmark Institute",
                "policy": "on",
                "purpose": "Measuring the accounts service.",
                "_xsrf": xsrf_of(form.text),
            }
            t0 = time.perf_counter()
            sent = applicant.post(f"{url}/accounts/", data=data, verify=cafile, timeout=30)
            figures["submission"].append(time.perf_counter() - t0)
            rid = re.search(r'id="request-id">(\d+)<', sent.text).group(1)
            if way == "web":
                page = admin.get(f"{url}/accounts/admin", verify=cafile, timeout=30)
                t0 = time.perf_counter()
                approval = {"action": "approve", "username": "", "_xsrf": xsrf_of(page.text)}
                admin.post(f"{url}/accounts/admin/requests/{rid}", data=approval,
                           verify=cafile, timeout=30)  # fmt: skip
            else:
                t0 = time.perf_counter()
                res = on_host(cfg, "scirepo", "accounts", "approve", rid)
                if res.returncode:
                    raise SystemExit(res.stderr)
            user, password = welcome_for(email)
            made.append(user)
            ssh_login(cfg, user, password)
            figures[way].append(time.perf_counter() - t0)
            print(f"round {i + 1}: {way:<3} approval to SSH login {figures[way][-1]:.2f} s "
                  f"({user})", flush=True)  # fmt: skip
    finally:
        for user in made:
            on_host(cfg, "userdel", "-r", user)
            on_host(cfg, "groupdel", user)
            on_host(cfg, "rm", "-rf", f"{cfg['paths']['workspaces']}/{user}")
        on_host(cfg, "systemctl", "restart", "scirepo-accounts")

    rows = []
    for name, label, target in (
        ("submission", "submission to acknowledgement page", None),
        ("web", "approval (review page) to SSH login", TARGET),
        ("cli", "approval (scirepo accounts approve) to SSH login", TARGET),
    ):
        values = figures[name]
        if values:
            rows.append({"figure": label, "n": len(values), "median_s": statistics.median(values),
                         "max_s": max(values), "target_s": target})  # fmt: skip
    print(f"\n{'figure':<52} {'n':>2} {'median':>8} {'max':>8} {'target':>8}")
    for r in rows:
        target = f"< {r['target_s']:.1f} s" if r["target_s"] else "-"
        print(f"{r['figure']:<52} {r['n']:>2} {r['median_s']:>7.3f}s {r['max_s']:>7.3f}s "
              f"{target:>8}")  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nwritten to {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
