"""Run the image jobs of .gitlab-ci.yml on this machine with gitlab-ci-local (`make ci-local`).

gitlab-ci-local (npm, pinned in ci/local/package-lock.json, installed by scripts/bootstrap
into ci/local/node_modules) runs GitLab jobs in a shell. It evaluates `rules:changes`
against `origin/<default branch>`, so the jobs run in a scratch checkout (a git repository
under build/, never this one): its `origin/main` is the baseline and its `main` the change.
`make ci-local` uses this checkout's HEAD as baseline and the working tree as change, so it
runs what GitLab would run for the uncommitted changes; tests/ci/test_gitlab_ci.py makes
its own changes. The registry is the local one of `make up` (registry.py), standing in for
GitLab's: CI_REGISTRY and the login variables point there.

    python -m scirepo.ci [--site site.yml] [JOB ...] [-- gitlab-ci-local options]

Without JOBs: the build, test and push jobs that the rules select for the uncommitted
changes. JOBs named run whatever changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

from scirepo.config import ScirepoError

REPO = Path(__file__).resolve().parent.parent
GITLAB_CI_LOCAL = REPO / "ci" / "local" / "node_modules" / ".bin" / "gitlab-ci-local"
SCRATCH = REPO / "build" / "ci-local"
# The scratch checkout's origin: never fetched, it only names the project (CI_PROJECT_PATH,
# hence CI_REGISTRY_IMAGE = <registry>/ci-local/scirepo).
ORIGIN = "https://gitlab.example.org/ci-local/scirepo.git"
DEFAULT_BRANCH = "main"
# The stages whose jobs run locally; lint runs as `make lint`, integration as `make test`.
STAGES = ("build", "test", "push")
GIT_ID = ["-c", "user.name=scirepo ci-local", "-c", "user.email=ci-local@scirepo.invalid"]


class CIError(ScirepoError):
    """gitlab-ci-local is missing or a scratch checkout could not be made."""


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    res = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, input=input, capture_output=True)
    if res.returncode != 0:
        raise CIError(f"git {' '.join(args)} failed in {cwd}: {res.stderr.decode().strip()}")
    return res.stdout.decode()


def gitlab_ci_local() -> Path:
    if not os.access(GITLAB_CI_LOCAL, os.X_OK):
        raise CIError(f"{GITLAB_CI_LOCAL} is missing: run scripts/bootstrap (npm ci in ci/local)")
    return GITLAB_CI_LOCAL


def worktree_files(repo: Path = REPO) -> list[str]:
    """Files of `repo`'s working tree that git would see: tracked and untracked, not ignored."""
    out = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


def copy_files(src: Path, dest: Path, files: list[str]) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, target, follow_symlinks=False)


def commit_all(cwd: Path, message: str) -> str:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "--allow-empty", "-m", message)
    return git(cwd, "rev-parse", "HEAD").strip()


def scratch_checkout(dest: Path, baseline: str = "worktree", repo: Path = REPO) -> Path:
    """A fresh git repository at `dest` holding `repo`'s files, on branch main, whose
    `origin/main` (and origin/HEAD) is a baseline commit:

    - baseline "worktree": the working tree of `repo` is the baseline and HEAD; the caller
      commits its own change on top;
    - baseline "head": `repo`'s HEAD commit is the baseline; the working tree (uncommitted
      changes included) is committed on top of it as HEAD.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    git(dest, "init", "-q", "-b", DEFAULT_BRANCH)
    # gitlab-ci-local's state (job directories, artifacts) is not part of the tree: without
    # this, every image tag would say -dirty.
    (dest / ".git" / "info" / "exclude").write_text("/.gitlab-ci-local/\n")
    files = worktree_files(repo)
    if baseline == "head":
        archive = subprocess.run(
            ["git", "archive", "--format=tar", "HEAD"], cwd=repo, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(dest, filter="tar")
        base = commit_all(dest, "baseline: HEAD of " + str(repo))
        for path in git(dest, "ls-files", "-z").split("\0"):
            if path and path not in files:
                (dest / path).unlink()
        copy_files(repo, dest, files)
        commit_all(dest, "the working tree of " + str(repo))
    elif baseline == "worktree":
        copy_files(repo, dest, files)
        base = commit_all(dest, "baseline: the working tree of " + str(repo))
    else:
        raise CIError(f"unknown baseline {baseline!r}")
    git(dest, "remote", "add", "origin", ORIGIN)
    git(dest, "update-ref", f"refs/remotes/origin/{DEFAULT_BRANCH}", base)
    git(dest, "symbolic-ref", "refs/remotes/origin/HEAD", f"refs/remotes/origin/{DEFAULT_BRANCH}")
    return dest


def local_variables(cfg: dict, site: Path) -> dict[str, str]:
    """CI variables that point the image jobs at this machine: the local registry (started
    by `make up`) as CI_REGISTRY, this virtualenv, the site file."""
    from scirepo import local  # noqa: PLC0415 - docker calls only when used

    registry = f"{local.gateway_ip()}:{cfg['local']['registry_port']}"
    return {
        "CI_REGISTRY": registry,
        # The local registry asks for no login; `docker login` still runs and succeeds.
        "CI_REGISTRY_USER": "ci-local",
        "CI_REGISTRY_PASSWORD": "ci-local",
        "SCIREPO_VENV": sys.prefix,
        "SCIREPO_SITE": str(site.resolve()),
    }


def clean_env() -> dict[str, str]:
    """This process's environment without what would steer the jobs' own tests (a test run
    inside pytest: PYTEST_*, the image-test selectors)."""
    drop = ("SCIREPO_TEST_IMAGE", "SCIREPO_IMAGES_JSON")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}


def command(variables: dict[str, str], *args: str) -> list[str]:
    """The gitlab-ci-local command line (to run in the checkout: its --cwd must be relative)."""
    cmd = [str(gitlab_ci_local()), "--no-color", "--timestamps", "--shell-isolation"]
    for key, value in variables.items():
        cmd += ["--variable", f"{key}={value}"]
    return [*cmd, *args]


def list_jobs(cwd: Path, variables: dict[str, str]) -> list[dict]:
    """gitlab-ci-local's view of the pipeline: every job with its stage, `when` (after the
    rules, `rules:changes` included) and needs."""
    res = subprocess.run(
        command(variables, "--list-json"), cwd=cwd, env=clean_env(), capture_output=True, text=True
    )
    if res.returncode != 0:
        raise CIError(f"gitlab-ci-local --list-json failed:\n{res.stderr[-3000:]}")
    # The JSON follows a few progress lines ("parsing and downloads finished in ...").
    start = res.stdout.find("\n[")
    return json.loads(res.stdout[start + 1 :] if start >= 0 else res.stdout)


def selected(jobs: list[dict], stages: tuple[str, ...] = STAGES) -> list[str]:
    """Names of the image jobs (`<stage>:<image>`) of `stages` that the rules put into the
    pipeline (the integration job, also in stage test, runs `make test`: not here)."""
    return [
        j["name"]
        for j in jobs
        if j["stage"] in stages and j["name"].startswith(j["stage"] + ":") and j["when"] != "never"
    ]


def run(
    cwd: Path, variables: dict[str, str], jobs: list[str], *extra: str, log: Path | None = None
):
    """Run `jobs` (and nothing else) with gitlab-ci-local; return the CompletedProcess."""
    cmd = command(variables, *jobs, *extra)
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    res.seconds = time.monotonic() - started
    return res


def main(argv: list[str] | None = None) -> int:
    from scirepo import config as siteconfig  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m scirepo.ci",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--site", type=Path, default=Path("site.yml"))
    parser.add_argument("jobs", nargs="*", help="jobs to run (default: what the rules select)")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    cfg = siteconfig.resolve(siteconfig.load(args.site))
    variables = local_variables(cfg, args.site)
    cwd = scratch_checkout(SCRATCH, baseline="head")
    jobs = args.jobs or selected(list_jobs(cwd, variables))
    if args.jobs:
        # Jobs asked for by name run whatever changed (rules:changes count as true).
        extra.append("--no-evaluate-rule-changes")
    if not jobs:
        print("ci-local: no image changed since HEAD: no build, test or push job to run")
        return 0
    print(f"ci-local: in {cwd}: {' '.join(jobs)}", flush=True)
    return subprocess.run(command(variables, *jobs, *extra), cwd=cwd, env=clean_env()).returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ScirepoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
