#!/usr/bin/env python3
"""Refresh the locks and propose them in a merge request (scheduled job `refresh-locks`).

Run from the root of a checkout of the default branch (docs/ci.md):

1. recompile every lock with the newest versions the indexes have: the command in
   SCIREPO_LOCK_COMMAND (default `python -m scirepo images lock --upgrade`);
2. when no lock changed: say so and stop (nothing committed, pushed or opened);
3. else commit the locks on branch SCIREPO_LOCKS_BRANCH (default scirepo/refresh-locks),
   made afresh from this checkout, force-push it, and open a merge request into
   CI_DEFAULT_BRANCH through the GitLab API, listing every pin that moved. If a merge
   request from that branch is open already, GitLab answers 409 and the push has updated it.

Environment: GitLab's predefined CI_API_V4_URL, CI_PROJECT_ID, CI_DEFAULT_BRANCH,
CI_SERVER_URL, CI_PROJECT_PATH; SCIREPO_LOCKS_TOKEN, a project access token (role Developer,
scopes api and write_repository: the job token can neither push nor open merge requests);
SCIREPO_LOCKS_REMOTE to push somewhere else than the project itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
from scirepo.images import read_lock  # noqa: E402 - this checkout's scirepo

LOCK_GLOBS = ["images/*/requirements.txt", "hub/requirements.txt", "hub/proxy/package-lock.json"]
DEFAULT_LOCK_COMMAND = [sys.executable, "-m", "scirepo", "images", "lock", "--upgrade"]
AUTHOR = ["-c", "user.name=scirepo lock refresh", "-c", "user.email=scirepo-locks@localhost"]


class RefreshError(Exception):
    pass


def git(*args: str) -> str:
    res = subprocess.run(["git", *AUTHOR, *args], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RefreshError(f"git {args[0]} failed: {res.stderr.strip()}")
    return res.stdout


def changed_locks() -> list[str]:
    """Lock files that differ from HEAD (or are new)."""
    out = git("status", "--porcelain", "--untracked-files=all", "--", *LOCK_GLOBS)
    return sorted(line[3:].strip() for line in out.splitlines() if line.strip())


def pins(path: str, text: str) -> dict[str, str]:
    """{package: version} of a lock: a hashed requirements file or an npm package-lock."""
    if path.endswith(".json"):
        packages = json.loads(text or "{}").get("packages", {})
        return {k.split("node_modules/")[-1]: v["version"] for k, v in packages.items() if k}
    return read_lock(text)


def describe(path: str) -> list[str]:
    """What moved in one lock: `name old → new`, `+name version`, `-name version`."""
    try:
        before = pins(path, git("show", f"HEAD:{path}"))
    except RefreshError:  # a new lock
        before = {}
    after = pins(path, (ROOT / path).read_text())
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old and new:
            lines.append(f"{name} {old} → {new}")
        elif new:
            lines.append(f"+{name} {new}")
        else:
            lines.append(f"-{name} {old}")
    return lines or ["(hashes or comments only)"]


def push_url(env: dict[str, str]) -> str:
    if env.get("SCIREPO_LOCKS_REMOTE"):
        return env["SCIREPO_LOCKS_REMOTE"]
    server = urllib.parse.urlsplit(env["CI_SERVER_URL"])
    token = urllib.parse.quote(env["SCIREPO_LOCKS_TOKEN"], safe="")
    return f"{server.scheme}://oauth2:{token}@{server.netloc}/{env['CI_PROJECT_PATH']}.git"


def open_merge_request(env: dict[str, str], branch: str, title: str, description: str) -> str:
    """POST /projects/:id/merge_requests; return what to tell the user."""
    api = env["CI_API_V4_URL"]
    if urllib.parse.urlsplit(api).scheme not in ("http", "https"):
        raise RefreshError(f"CI_API_V4_URL={api} is not an http(s) URL")
    url = f"{api}/projects/{urllib.parse.quote(env['CI_PROJECT_ID'], safe='')}"
    body = {
        "source_branch": branch,
        "target_branch": env["CI_DEFAULT_BRANCH"],
        "title": title,
        "description": description,
        "remove_source_branch": True,
        "labels": "dependencies",
    }
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        f"{url}/merge_requests",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"PRIVATE-TOKEN": env["SCIREPO_LOCKS_TOKEN"], "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as res:  # noqa: S310 - checked above
            created = json.loads(res.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 409:  # "Another open merge request already exists for this source branch"
            return f"a merge request from {branch} is open already; the push updated it"
        detail = exc.read()[:500].decode(errors="replace")
        raise RefreshError(f"opening the merge request failed: {exc.code} {detail}") from None
    return f"opened merge request !{created.get('iid')}: {created.get('web_url')}"


def main(env: dict[str, str]) -> int:
    command = shlex.split(env["SCIREPO_LOCK_COMMAND"]) if env.get("SCIREPO_LOCK_COMMAND") else None
    if git("status", "--porcelain", "--", *LOCK_GLOBS).strip():
        raise RefreshError("the locks have uncommitted changes before the refresh")
    subprocess.run(command or DEFAULT_LOCK_COMMAND, cwd=ROOT, check=True)
    changed = changed_locks()
    if not changed:
        print("refresh-locks: no lock changed; nothing to propose")
        return 0
    missing = [
        k for k in ("SCIREPO_LOCKS_TOKEN", "CI_API_V4_URL", "CI_PROJECT_ID") if not env.get(k)
    ]
    if missing:
        raise RefreshError(f"locks changed but {', '.join(missing)} not set: cannot propose them")
    branch = env.get("SCIREPO_LOCKS_BRANCH") or "scirepo/refresh-locks"
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    title = f"Refresh the locks ({today})"
    sections = [f"- `{path}`: " + ", ".join(describe(path)) for path in changed]
    description = (
        "The scheduled lock refresh (`scripts/refresh_locks.py`) recompiled the locks with "
        "the newest versions. The merge request's pipeline builds and tests every image "
        "whose lock changed.\n\n" + "\n".join(sections)
    )
    git("checkout", "-q", "-B", branch)
    git("add", "--", *changed)
    git("commit", "-q", "-m", f"{title}\n\n" + "\n".join(sections))
    git("push", "-q", "--force", push_url(env), f"HEAD:refs/heads/{branch}")
    print(f"refresh-locks: pushed {branch}: {len(changed)} lock(s) changed")
    print("refresh-locks: " + open_merge_request(env, branch, title, description))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(dict(os.environ)))
    except (RefreshError, subprocess.CalledProcessError) as exc:
        print(f"refresh-locks: {exc}", file=sys.stderr)
        sys.exit(1)
