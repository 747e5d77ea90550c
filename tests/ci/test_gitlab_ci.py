"""The GitLab pipeline (.gitlab-ci.yml), run as it is by gitlab-ci-local (scirepo.ci).

A scratch checkout of this working tree (origin/main = the tree as it is) gets one commit
that changes only images/astronomy; gitlab-ci-local then evaluates the real file's rules
against origin/main and runs the image jobs they select, in shell jobs isolated from each
other (artifacts pass between them as in GitLab), with the local registry of `make up`
standing in for GitLab's ($CI_REGISTRY*). GitLab itself cannot run here: the scheduled lock
refresh pushes to a local bare repository and opens its merge request on a small HTTP
server that stands in for the GitLab API.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from scirepo import ci, images, registry, tls
from scirepo.dockercli import DOCKER, docker_ok

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / "build" / "logs"
CHANGED = "astronomy"
TOKEN = "glpat-test-token"  # noqa: S105 - given to the fake GitLab API only
UNCHANGED = ["seismology", "seismology-obspy14", "gravitational-waves"]
# A manifest by digest, as the Docker engine asks for it.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json,"
    "application/vnd.oci.image.manifest.v1+json"
)


def _answers(addr: str) -> bool:
    try:
        return registry._answers(addr)
    except OSError:
        return False


@pytest.fixture(scope="module")
def variables(request, cfg, site_path) -> dict[str, str]:
    """CI variables for local runs; the local registry is brought up when it is not."""
    ci.gitlab_ci_local()  # fails with what to run when gitlab-ci-local is not installed
    if not docker_ok():
        # A fresh machine (CI): these tests run first, before any engine was started.
        request.getfixturevalue("local_host")
    found = ci.local_variables(cfg, site_path)
    if not _answers(found["CI_REGISTRY"]):
        request.getfixturevalue("local_host")
    assert _answers(found["CI_REGISTRY"]), f"no registry at {found['CI_REGISTRY']}"
    return found


def _job_lines(log: str, what: str) -> dict[str, int]:
    """{job: line number} of the first line where gitlab-ci-local says `what` for a job."""
    found: dict[str, int] = {}
    for i, line in enumerate(log.splitlines()):
        m = re.match(r"^\[[^\]]*\] (\S+)\s+" + re.escape(what), line)
        if m and m.group(1) not in found:
            found[m.group(1)] = i
    return found


def _durations(log: str) -> dict[str, str]:
    """{job: duration} from gitlab-ci-local's summary (` PASS  [ 825 ms] build:base`)."""
    return dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r"^ (?:PASS|FAIL)\s+\[\s*([^\]]+?)\s*\] (\S+)", log, re.M)
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, variables) -> dict:
    """The image jobs of a pipeline for a commit that changes only images/astronomy."""
    checkout = ci.scratch_checkout(tmp_path_factory.mktemp("ci") / "scirepo")
    lock_in = checkout / "images" / CHANGED / "requirements.in"
    lock_in.write_text(lock_in.read_text() + "# changed by tests/ci/test_gitlab_ci.py\n")
    head = ci.commit_all(checkout, f"a change to images/{CHANGED} only")
    jobs = ci.list_jobs(checkout, variables)
    chosen = ci.selected(jobs)
    res = ci.run(checkout, variables, chosen, log=LOGS / "ci-local-pipeline.log")
    log = res.stdout + res.stderr
    print(f"gitlab-ci-local {' '.join(chosen)}: {res.seconds:.1f} s {_durations(log)}")
    return {
        "checkout": checkout,
        "head": head,
        "jobs": {j["name"]: j for j in jobs},
        "chosen": chosen,
        "res": res,
        "log": log,
    }


def test_rules_changes_select_only_the_changed_stack_and_its_parent(pipeline):
    jobs = pipeline["jobs"]
    assert pipeline["chosen"] == [
        "build:base",
        f"build:{CHANGED}",
        f"test:{CHANGED}",
        f"push:{CHANGED}",
    ]
    for name in UNCHANGED:
        for stage in ("build", "test", "push"):
            assert jobs[f"{stage}:{name}"]["when"] == "never", f"{stage}:{name} would run"
    assert jobs["build:hub"]["when"] == "never"
    # base is rebuilt for its child (a no-op with the build cache) but not tested or pushed.
    assert jobs["test:base"]["when"] == jobs["push:base"]["when"] == "never"
    assert jobs["refresh-locks"]["when"] == "never"


def test_jobs_pass_in_the_order_of_their_needs(pipeline):
    res, log = pipeline["res"], pipeline["log"]
    assert res.returncode == 0, f"gitlab-ci-local failed (log: {LOGS}/ci-local-pipeline.log)"
    started, finished = _job_lines(log, "starting shell"), _job_lines(log, "finished in")
    assert sorted(started) == sorted(pipeline["chosen"])
    assert finished["build:base"] < started[f"build:{CHANGED}"]
    assert finished[f"build:{CHANGED}"] < started[f"test:{CHANGED}"]
    assert finished[f"test:{CHANGED}"] < started[f"push:{CHANGED}"]
    for name in UNCHANGED:
        assert f"{name}:" not in log.replace(f"images/{name}", "")
    assert re.search(r"test:astronomy\s+> =+ \d+ passed", log), "no image test ran"
    assert "Login Succeeded" in log


def test_pushed_image_is_the_tested_one_by_digest(pipeline, variables):
    log, checkout = pipeline["log"], pipeline["checkout"]
    tested = re.search(rf"testing (\S+/ci/\S+/{CHANGED}@sha256:[0-9a-f]{{64}})", log)
    assert tested, "the test job did not say which image it tested"
    staged_ref = tested.group(1)
    digest = staged_ref.split("@", 1)[1]
    # The push job's artifact: images.json with the image at $CI_REGISTRY_IMAGE.
    pushed = images.load_images_json(checkout / "build" / "images.json")["stacks"][CHANGED]
    repo = f"{variables['CI_REGISTRY']}/ci-local/scirepo/scirepo/{CHANGED}"
    assert pushed["push_ref"] == f"{repo}@{digest}"
    # The registry itself serves that manifest, by digest and under the image's tag.
    path = repo.split("/", 1)[1]
    tag = pushed["tag"].rsplit(":", 1)[1]
    for ref in (digest, tag):
        r = requests.get(
            f"https://{variables['CI_REGISTRY']}/v2/{path}/manifests/{ref}",
            headers={"Accept": MANIFEST_TYPES},
            verify=str(tls.CA_CERT),
            timeout=10,
        )
        assert r.status_code == 200, f"{path}:{ref}: {r.status_code}"
        assert r.headers["Docker-Content-Digest"] == digest
    # Built from the change commit, on the base of this pipeline (pinned by digest).
    label = subprocess.run(
        [DOCKER, "image", "inspect", "-f", "{{json .Config.Labels}}", staged_ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = json.loads(json.loads(label)[images.MANIFEST_LABEL])
    assert manifest["revision"] == pipeline["head"][:7]
    base_ref = re.search(r"base: pushing (\S+)", log).group(1)
    layers = {}
    for name, ref in (("base", base_ref), (CHANGED, staged_ref)):
        layers[name] = json.loads(
            subprocess.run(
                [DOCKER, "image", "inspect", "-f", "{{json .RootFS.Layers}}", ref],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    assert layers[CHANGED][: len(layers["base"])] == layers["base"]


def test_nothing_changed_runs_no_image_job(pipeline, variables):
    """Once the change is on origin/main, a pipeline for the same tree builds nothing."""
    checkout = pipeline["checkout"]
    ci.git(checkout, "update-ref", "refs/remotes/origin/main", "HEAD")
    assert ci.selected(ci.list_jobs(checkout, variables)) == []


# --------------------------------------------------------------------------- lock refresh


class FakeGitLab(BaseHTTPRequestHandler):
    """POST /api/v4/projects/:id/merge_requests, recorded; answers as GitLab does (201)."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(
            {
                "path": self.path,
                "token": self.headers.get("PRIVATE-TOKEN"),  # header names: any case
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body),
            }
        )
        answer = json.dumps({"iid": 7, "web_url": "http://gitlab.invalid/mr/7"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def gitlab_api():
    FakeGitLab.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitLab)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/v4", FakeGitLab.received
    server.shutdown()
    server.server_close()


def _refresh(tmp_path, variables, api: str, **extra: str):
    """Run the scheduled job `refresh-locks` in `tmp_path/scirepo` (made by the caller);
    return (result, log, bare remote)."""
    checkout = tmp_path / "scirepo"
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    schedule = {
        **variables,
        "CI_PIPELINE_SOURCE": "schedule",
        "SCIREPO_REFRESH_LOCKS": "1",
        "CI_API_V4_URL": api,
        "SCIREPO_LOCKS_TOKEN": TOKEN,
        "SCIREPO_LOCKS_REMOTE": str(remote),
        **extra,
    }
    selected = [j["name"] for j in ci.list_jobs(checkout, schedule) if j["when"] != "never"]
    assert selected == ["refresh-locks"], "a scheduled pipeline runs only the lock refresh"
    res = ci.run(checkout, schedule, ["refresh-locks"], log=LOGS / f"ci-local-{tmp_path.name}.log")
    return res, res.stdout + res.stderr, remote


def _branches(remote: Path) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(remote), "for-each-ref", "--format=%(refname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def test_refresh_locks_pushes_a_branch_and_opens_a_merge_request(tmp_path, variables, gitlab_api):
    api, received = gitlab_api
    checkout = ci.scratch_checkout(tmp_path / "scirepo")
    lock = checkout / "images" / "astronomy" / "requirements.txt"
    current = images.read_lock(lock.read_text())["pyvo"]
    assert "pyvo" not in images.read_lock((checkout / "images/base/requirements.txt").read_text())
    # The lock as it was long ago: the real `scirepo images lock --upgrade` must move it.
    lock.write_text(lock.read_text().replace(f"pyvo=={current}", "pyvo==1.0"))
    ci.commit_all(checkout, "an old pyvo pin")

    res, log, remote = _refresh(tmp_path, variables, api)
    assert res.returncode == 0, log[-3000:]
    assert _branches(remote) == ["refs/heads/scirepo/refresh-locks"]
    branch = "scirepo/refresh-locks"

    def at_branch(*args: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(remote), *args], capture_output=True, text=True, check=True
        ).stdout

    pushed = images.read_lock(at_branch("show", f"{branch}:images/astronomy/requirements.txt"))
    assert pushed["pyvo"] != "1.0"
    # Only locks in the commit, on top of the default branch as it was.
    changed = at_branch(
        "diff", "--name-only", ci.git(checkout, "rev-parse", "HEAD").strip(), branch
    )
    assert changed.split() and all(
        re.fullmatch(r"images/[^/]+/requirements\.txt|hub/requirements\.txt|hub/proxy/.*", p)
        for p in changed.split()
    )

    assert len(received) == 1, received
    mr = received[0]
    assert mr["path"] == "/api/v4/projects/1217/merge_requests"  # gitlab-ci-local's project id
    assert mr["token"] == TOKEN
    assert mr["content_type"] == "application/json"
    body = mr["body"]
    assert body["source_branch"] == branch and body["target_branch"] == "main"
    assert body["title"].startswith("Refresh the locks")
    assert body["remove_source_branch"] is True
    assert "`images/astronomy/requirements.txt`: " in body["description"]
    assert f"pyvo 1.0 → {pushed['pyvo']}" in body["description"]
    assert "opened merge request !7" in log


def test_refresh_locks_with_unchanged_locks_pushes_nothing(tmp_path, variables, gitlab_api):
    api, received = gitlab_api
    ci.scratch_checkout(tmp_path / "scirepo")
    # The real lock compilation, keeping the pins (no --upgrade): the locks of this tree
    # come out unchanged, whatever the index got since.
    python = f"{variables['SCIREPO_VENV']}/bin/python"
    res, log, remote = _refresh(
        tmp_path, variables, api, SCIREPO_LOCK_COMMAND=f"{python} -m scirepo images lock"
    )
    assert res.returncode == 0, log[-3000:]
    assert "images/astronomy/requirements.txt:" in log  # the locks were compiled
    assert "no lock changed; nothing to propose" in log
    assert _branches(remote) == []
    assert received == []
