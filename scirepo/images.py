"""Build, push and lock the platform's container images (on the operator's machine or in CI).

Four kinds of image, all on one Debian 12 base (`scirepo/debian:bookworm`):
- the Debian base itself: pulled from `build.base_image`, or bootstrapped with debootstrap
  from a Debian mirror (air-gapped builds; `ensure_base_image`);
- the runtime (`images/runtime`: Debian's Python, venv, tini), the local parent of the base
  stack and the hub, so that they share those layers; never pushed (`build_runtime`);
- notebook stacks, one per key of `images.stacks`, built from `images/<name>/` (`base` is
  the parent of every other stack, which gets it pinned by digest as build arg BASE_IMAGE);
- the hub, built from `hub/Dockerfile` with the repository root as context.

Each image is tagged `<push registry>/<namespace>/<name>:<YYYYMMDD>-<git sha7>` (no
`latest`), pushed, and recorded by digest in build/images.json, which the playbook gets as
`-e @build/images.json`. The host pulls `<images.registry>/<namespace>/<name>@sha256:...`:
the registry's name may differ between the operator's machine and the host, the digest not.

Builds are reproducible when nothing changed: labels carry the date of the git commit, not
the clock, so a rebuild of an unchanged tree gives the same image and the same digest (and
a second deploy changes nothing).

Python packages are installed in the images only from hashed locks (`requirements.txt`),
compiled from short `requirements.in` files by `scirepo images lock` (`make locks`) with uv
(a child stack's lock is constrained by the base's: the packages they share keep the base's
pins); the first package of a `requirements.in` is the image's headline package;
the proxy's npm packages from `hub/proxy/package-lock.json` (with integrity hashes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scirepo import progress
from scirepo.config import ScirepoError
from scirepo.dockercli import DOCKER, DockerError, docker

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
IMAGES_JSON = BUILD / "images.json"
LOGS = BUILD / "logs"
DEBIAN_IMAGE = "scirepo/debian:bookworm"
# Shared local parent of the base stack and the hub (images/runtime); never pushed.
RUNTIME_IMAGE = "scirepo/runtime:bookworm"
# The Dockerfile of every child stack that has none of its own (Python packages only).
STACK_DOCKERFILE = REPO / "images" / "stack.Dockerfile"
SUITE = "bookworm"
HUB = "hub"
# The stack every other stack starts from (schema: images.stacks).
PARENT_STACK = "base"
MANIFEST_LABEL = "org.scirepo.manifest"
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
# Lock compilation targets the images' interpreter: Debian 12's python3 on Linux.
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "x86_64-unknown-linux-gnu"
# Packages no lock installs, although a dependency asks for them, and why: every start of a
# single-user server (and of the hub) pays for what it imports.
LOCK_OMIT = {
    # jsonschema's optional checker of the "iri" formats (jupyter-events asks for it through
    # jsonschema[format-nongpl]) builds some 35 Lark parsers when imported: about 1 s of
    # CPU and several MiB in every server, for a format that no Jupyter schema uses.
    # jsonschema imports it only if it is there.
    "rfc3987-syntax": "slow import (Lark parsers built at import) for an unused format",
    "lark": "only rfc3987-syntax needs it",
}


class ImageError(ScirepoError):
    """An image could not be bootstrapped, built, pushed or locked."""


# --------------------------------------------------------------------------- apt sources


def parse_deb822_sources(text: str) -> list[dict]:
    """Entries of a deb822 `.sources` file: [{types, uris, suites, components}], enabled only.

    ref: sources.list(5), "DEB822-STYLE FORMAT". Fields are case-insensitive; a field may
    continue on lines that start with white space; `#` starts a comment line.
    """
    entries, fields, key = [], {}, None

    def flush() -> None:
        if fields and fields.get("enabled", "yes").strip().lower() != "no":
            entries.append(
                {
                    "types": fields.get("types", "").split(),
                    "uris": fields.get("uris", "").split(),
                    "suites": fields.get("suites", "").split(),
                    "components": fields.get("components", "").split(),
                }
            )
        fields.clear()

    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            flush()
            key = None
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    flush()
    return entries


def parse_sources_list(text: str) -> list[dict]:
    """Entries of a one-line-style `sources.list`: `deb [options] URI suite [component...]`."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options right after the type: deb [arch=amd64 signed-by=...] URI ...
        line = re.sub(r"^(deb(?:-src)?)\s+\[[^\]]*\]", r"\1 ", line)
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("deb", "deb-src"):
            continue
        entries.append(
            {"types": [parts[0]], "uris": [parts[1]], "suites": [parts[2]], "components": parts[3:]}
        )
    return entries


def debian_mirrors(entries: list[dict]) -> list[str]:
    """Binary-package mirror URIs of `entries` that serve a release suite (like `bookworm`).

    Entries that only serve `-security` or `-updates` suites are left out: such archives
    (security.debian.org) hold no full release, so debootstrap cannot use them.
    """
    out = []
    for entry in entries:
        if "deb" not in entry["types"]:
            continue
        if not any("-" not in s and "/" not in s for s in entry["suites"]):
            continue
        for uri in entry["uris"]:
            if uri.startswith(("http://", "https://", "file:/")) and uri not in out:
                out.append(uri)
    return out


def machine_entries(
    sources_list: Path = APT_SOURCES_LIST, sources_dir: Path = APT_SOURCES_DIR
) -> list[dict]:
    """This machine's apt entries, in apt's order: sources.list, then the directory sorted."""
    entries = []
    if sources_list.is_file():
        entries += parse_sources_list(sources_list.read_text(errors="replace"))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".list":
                entries += parse_sources_list(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += parse_deb822_sources(path.read_text(errors="replace"))
    return entries


def debian_mirror(cfg: dict) -> str:
    """The mirror debootstrap uses: `build.debian_mirror`, else the machine's first one."""
    if cfg["build"]["debian_mirror"]:
        return cfg["build"]["debian_mirror"]
    mirrors = debian_mirrors(machine_entries())
    if not mirrors:
        raise ImageError(
            f"no Debian mirror in {APT_SOURCES_LIST} or {APT_SOURCES_DIR}/: "
            "set build.debian_mirror in the site config"
        )
    return mirrors[0]


# --------------------------------------------------------------------------- base image


def image_exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True).returncode == 0


def ensure_base_image(cfg: dict) -> str:
    """Make sure DEBIAN_IMAGE exists locally; return its name.

    `build.base_image` set: pull it and tag it DEBIAN_IMAGE (each time, to follow the tag).
    When that registry cannot be reached (an air-gapped machine), or nothing is set, an
    existing DEBIAN_IMAGE is reused, else it is bootstrapped with debootstrap.
    """
    wanted = cfg["build"]["base_image"]
    if wanted:
        progress.say(f"pulling the Debian base {wanted}")
        try:
            docker("pull", "-q", wanted, capture=True)
        except DockerError as exc:
            progress.say(f"build.base_image {wanted} not reachable ({str(exc)[-160:]}); "
                         "using a local or debootstrapped base instead")  # fmt: skip
        else:
            docker("tag", wanted, DEBIAN_IMAGE, capture=True)
            return DEBIAN_IMAGE
    if image_exists(DEBIAN_IMAGE):
        progress.say(f"Debian base {DEBIAN_IMAGE} exists; reusing it")
        return DEBIAN_IMAGE
    bootstrap_debian(debian_mirror(cfg))
    return DEBIAN_IMAGE


def is_debootstrap_phase(line: str) -> bool:
    """True for debootstrap's phase lines ("I: Installing core packages..."), not the
    per-package ones ("I: Extracting bash...", "I: Retrieving libc6 2.36")."""
    if not line.startswith("I: "):
        return False
    text = line[3:]
    return "successfully" in text or (text.endswith("...") and len(text.split()) >= 3)


def bootstrap_debian(mirror: str) -> None:
    """debootstrap --variant=minbase into a temp dir, then `docker import` it as DEBIAN_IMAGE."""
    if not shutil.which("debootstrap"):
        from scirepo.local import _apt_install  # noqa: PLC0415 - avoid an import cycle

        progress.say("installing debootstrap")
        _apt_install(["debootstrap"])
    started = time.monotonic()
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / "debootstrap.log"
    # /var/tmp: on disk, and the tree holds device nodes that a tmpfs may refuse.
    root = Path(tempfile.mkdtemp(prefix="scirepo-debootstrap-", dir="/var/tmp"))
    try:
        progress.say(f"debootstrap {SUITE} (minbase) from {mirror}; log: {log_path}")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                ["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for line in proc.stdout:
                log.write(line)
                if is_debootstrap_phase(line.strip()):
                    progress.say(f"  {line.strip()[3:]}")
            if proc.wait() != 0:
                raise ImageError(f"debootstrap failed (exit {proc.returncode}); see {log_path}")
        # Downloaded .debs and package lists are not part of the base (apt fetches fresh).
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        progress.say(f"importing it into docker as {DEBIAN_IMAGE}")
        tar = subprocess.Popen(
            ["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        imp = subprocess.run(
            [
                DOCKER,
                "import",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                "ENV LANG=C.UTF-8",
                "-",
                DEBIAN_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise ImageError(f"importing the Debian base failed: {imp.stderr.strip()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    progress.say(f"Debian base ready in {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------- pure helpers


def git_revision(repo: Path = REPO) -> tuple[str, str, bool]:
    """(sha7, commit date as YYYY-MM-DDTHH:MM:SSZ, dirty) of `repo`; ("nogit", epoch) outside git.

    The commit date stands for the build date: it keeps unchanged rebuilds identical.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=7", "HEAD")
        stamp = int(git("log", "-1", "--format=%ct", "HEAD"))
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "nogit", "1970-01-01T00:00:00Z", True
    date = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return sha, date, dirty


def image_tag(
    date: str, sha: str, dirty: bool = False, headline: tuple[str, str] | None = None
) -> str:
    """`YYYYMMDD-sha7[-dirty][-package-version]`: the commit date, the commit (`-dirty` when
    the tree had uncommitted changes) and the headline package's locked version."""
    tag = f"{date[:10].replace('-', '')}-{sha}" + ("-dirty" if dirty else "")
    if headline:
        tag += "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(headline))
    return tag[:128]  # the longest tag a registry accepts


def repository(registry: str, namespace: str, name: str) -> str:
    return f"{registry}/{namespace}/{name}"


def read_lock(text: str) -> dict[str, str]:
    """{normalized name: version} of the `name==version` pins in a requirements lock."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[normalize(m.group(1))] = m.group(3)
    return pins


def read_requirements_in(text: str) -> list[str]:
    """Normalized names of the packages a `requirements.in` asks for."""
    names = []
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m and not line.lstrip().startswith("-"):
            names.append(normalize(m.group(1)))
    return names


def headline(requirements_in: str) -> str | None:
    """The image's headline package: the first one its `requirements.in` asks for."""
    names = read_requirements_in(requirements_in)
    return names[0] if names else None


def normalize(name: str) -> str:
    """ref: PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def push_digest(output: str) -> str | None:
    """The digest `docker push` reports: `TAG: digest: sha256:... size: N`."""
    found = re.findall(r"digest: (sha256:[0-9a-f]{64})", output)
    return found[-1] if found else None


def manifest(
    name: str, description: str, lock_in: str, lock: str, date: str, revision: str, tag: str
) -> dict:
    """Package manifest of an image: its headline packages' locked versions and lock hash."""
    pins = read_lock(lock)
    return {
        "name": name,
        "description": description,
        "tag": tag,
        "revision": revision,
        "source_date": date,
        "headline": headline(lock_in),
        "packages": {p: pins[p] for p in read_requirements_in(lock_in) if p in pins},
        "lock_sha256": hashlib.sha256(lock.encode()).hexdigest(),
    }


def images_document(hub: dict | None, stacks: dict[str, dict]) -> dict:
    """The document of build/images.json (shape fixed in the project's interfaces)."""
    doc: dict = {"stacks": {}}
    if hub:
        doc["hub"] = {"ref": hub["ref"], "tag": hub["tag"], "push_ref": hub["push_ref"]}
    for name, built in stacks.items():
        doc["stacks"][name] = {
            "ref": built["ref"],
            "tag": built["tag"],
            # The same digest under the address it was pushed to from the build machine.
            "push_ref": built["push_ref"],
            "manifest": built["manifest"],
        }
    return {"scirepo_images": doc}


def build_order(stacks: list[str], only: str | None = None) -> list[str]:
    """Names to build: the parent stack first, the other stacks, then the hub."""
    names = [PARENT_STACK] if PARENT_STACK in stacks else []
    names += [s for s in stacks if s != PARENT_STACK] + [HUB]
    if only is not None:
        if only not in names:
            raise ImageError(f"unknown image {only!r}: one of {', '.join(names)}")
        return [only]
    return names


# --------------------------------------------------------------------------- build and push


def _paths(name: str) -> tuple[Path, Path, Path]:
    """(Dockerfile, build context, lock directory) of image `name`."""
    if name == HUB:
        return REPO / "hub" / "Dockerfile", REPO, REPO / "hub"
    ctx = REPO / "images" / name
    own = ctx / "Dockerfile"
    # A child stack of Python packages only has no Dockerfile of its own: STACK_DOCKERFILE.
    if own.exists() or name == PARENT_STACK:
        return own, ctx, ctx
    return STACK_DOCKERFILE, ctx, ctx


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _run_build(cmd: list[str], log_path: Path, label: str) -> None:
    """Run `docker build`, log everything, show the step lines with elapsed time."""
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            log.write(line)
            # BuildKit's plain progress: "#7 [3/6] RUN ..." starts a step.
            m = re.match(r"^#\d+ (\[\s*\d+/\d+\] .*)", line)
            if m:
                progress.say(f"  {label}: {m.group(1)[:90]}")
        if proc.wait() != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise ImageError(f"building {label} failed; log: {log_path}\n{tail}")


def build_image(
    cfg: dict,
    name: str,
    push_registry: str,
    *,
    base_ref: str | None = None,
    revision: tuple[str, str, bool] | None = None,
    push: bool = True,
    no_cache: bool = False,
) -> dict:
    """Build image `name` (a stack or "hub"), tag it, push it; return what images.json holds.

    Returns {"tag", "ref", "digest", "push_ref", "manifest"}: `tag` and `ref` name the image
    at `images.registry` (what the host pulls), `push_ref` at `push_registry`. `base_ref` is
    the BASE_IMAGE build arg (default: the shared runtime image). `no_cache` builds every
    step again (`docker build --no-cache`; BuildKit cache mounts such as pip's are kept).
    "seconds" holds how long the build and the push took.
    """
    dockerfile, context, lock_dir = _paths(name)
    if not dockerfile.exists():
        raise ImageError(f"{dockerfile} does not exist: the image {name} cannot be built")
    sha, date, dirty = revision or git_revision()
    lock_in, lock = _read(lock_dir / "requirements.in"), _read(lock_dir / "requirements.txt")
    top = headline(lock_in)
    pinned = read_lock(lock).get(top) if top else None
    tag = image_tag(date, sha, dirty, (top, pinned) if pinned else None)
    ns = cfg["images"]["namespace"]
    push_tag = f"{repository(push_registry, ns, name)}:{tag}"
    description = (
        "JupyterHub"
        if name == HUB
        else cfg["images"]["stacks"].get(name, {}).get("description", "")
    )
    man = manifest(
        name,
        description,
        lock_in,
        lock,
        date,
        sha + ("-dirty" if dirty else ""),
        tag,
    )
    cmd = [
        DOCKER,
        "build",
        "--progress=plain",
        "-f",
        str(dockerfile),
        "-t",
        push_tag,
        "--build-arg",
        f"BASE_IMAGE={base_ref or RUNTIME_IMAGE}",
        "--label",
        f"{MANIFEST_LABEL}={json.dumps(man, sort_keys=True)}",
        "--label",
        f"org.opencontainers.image.title=scirepo {name}",
        "--label",
        f"org.opencontainers.image.description={description}",
        "--label",
        f"org.opencontainers.image.revision={man['revision']}",
        "--label",
        f"org.opencontainers.image.created={date}",
        "--label",
        f"org.opencontainers.image.version={tag}",
    ]
    ca = cfg["build"]["ca_bundle"]
    if ca:
        # A BuildKit secret: present during the RUN steps that mount it, never in a layer.
        cmd += ["--secret", f"id=ca,src={ca}"]
    if no_cache:
        cmd.append("--no-cache")
    LOGS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _run_build([*cmd, str(context)], LOGS / f"build-{name}.log", name)
    seconds = {"build": time.monotonic() - t0}
    result = {
        "tag": f"{repository(cfg['images']['registry'], ns, name)}:{tag}",
        "push_ref": push_tag,
        "manifest": man,
        "digest": None,
        "ref": None,
        "seconds": seconds,
    }
    if not push:
        return result
    progress.say(f"  {name}: pushing {push_tag}")
    t0 = time.monotonic()
    out = docker("push", push_tag, capture=True)
    seconds["push"] = time.monotonic() - t0
    digest = push_digest(out) or _repo_digest(push_tag, repository(push_registry, ns, name))
    result["digest"] = digest
    result["ref"] = f"{repository(cfg['images']['registry'], ns, name)}@{digest}"
    result["push_ref"] = f"{repository(push_registry, ns, name)}@{digest}"
    return result


def _repo_digest(image: str, repo: str) -> str:
    out = docker("image", "inspect", "--format", "{{json .RepoDigests}}", image, capture=True)
    for ref in json.loads(out) or []:
        if ref.startswith(repo + "@"):
            return ref.split("@", 1)[1]
    raise ImageError(f"no digest of {image} in {repo} after the push")


def load_images_json(path: Path | None = None) -> dict:
    """The `scirepo_images` part of build/images.json; empty when there is none yet."""
    try:
        return json.loads((path or IMAGES_JSON).read_text())["scirepo_images"]
    except (OSError, ValueError, KeyError):
        return {"stacks": {}}


def build_runtime(cfg: dict) -> str:
    """Build RUNTIME_IMAGE (images/runtime) from the Debian base; a no-op when cached."""
    cmd = [DOCKER, "build", "--progress=plain", "-t", RUNTIME_IMAGE,
           "--build-arg", f"BASE_IMAGE={DEBIAN_IMAGE}"]  # fmt: skip
    LOGS.mkdir(parents=True, exist_ok=True)
    _run_build([*cmd, str(REPO / "images" / "runtime")], LOGS / "build-runtime.log", "runtime")
    return RUNTIME_IMAGE


def build_all(cfg: dict, push_registry: str, only: str | None = None) -> dict:
    """Build and push every image (or only `only`); write build/images.json; return it.

    With `only`, the other images keep their entries from the existing images.json.
    """
    names = build_order(list(cfg["images"]["stacks"]), only)
    ensure_base_image(cfg)
    build_runtime(cfg)
    previous = load_images_json()
    stacks = {k: v for k, v in previous.get("stacks", {}).items() if k in cfg["images"]["stacks"]}
    hub = previous.get("hub")
    revision = git_revision()
    ns = cfg["images"]["namespace"]
    parent_ref = None
    if PARENT_STACK in stacks:
        # A child stack alone: its parent from the last build, by digest, at the push registry.
        parent_ref = (
            repository(push_registry, ns, PARENT_STACK)
            + "@"
            + stacks[PARENT_STACK]["ref"].split("@", 1)[1]
        )
    started = time.monotonic()
    for i, name in enumerate(names, 1):
        t0 = time.monotonic()
        print(f"[images {i}/{len(names)}] {name}: building...", flush=True)
        is_child = name not in (HUB, PARENT_STACK)
        if is_child and parent_ref is None:
            raise ImageError(f"stack {name} needs the {PARENT_STACK} stack built first")
        built = build_image(
            cfg, name, push_registry, revision=revision, base_ref=parent_ref if is_child else None
        )
        if name == PARENT_STACK:
            parent_ref = built["push_ref"]
        if name == HUB:
            hub = built
        else:
            stacks[name] = built
        print(
            f"[images {i}/{len(names)}] {name}: {built['ref']} ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    doc = images_document(hub, stacks)
    write_images_json(doc)
    progress.say(f"wrote {IMAGES_JSON} ({time.monotonic() - started:.0f} s)")
    return doc


def write_images_json(doc: dict, path: Path | None = None) -> None:
    """Write an images document (`images_document`) atomically to `path` (build/images.json)."""
    path = path or IMAGES_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def entry(images_doc: dict, name: str) -> dict:
    """The entry of image `name` (a stack or "hub") in the `scirepo_images` part of an
    images.json (`load_images_json`)."""
    found = images_doc.get("hub") if name == HUB else images_doc.get("stacks", {}).get(name)
    if not found:
        have = [*images_doc.get("stacks", {}), *([HUB] if images_doc.get("hub") else [])]
        raise ImageError(f"no image {name!r} in images.json (it has: {', '.join(have) or '-'})")
    return found


def release_image(built: dict, name: str, push_registry: str, ns: str) -> dict:
    """Push an image that was built and pushed elsewhere (its images.json entry `built`,
    pulled by digest when this engine lacks it) to `push_registry` under the same tag;
    return the entry with `push_ref` at `push_registry`.

    The image is not rebuilt: what was tested is what is pushed. The registry must report
    the digest it had before (same manifest), else ImageError.
    """
    source = built["push_ref"]
    if "@" not in source:
        raise ImageError(f"{name}: {source} is not a digest reference")
    digest = source.split("@", 1)[1]
    dest_repo = repository(push_registry, ns, name)
    dest = f"{dest_repo}:{built['tag'].rsplit(':', 1)[1]}"
    if not image_exists(source):
        progress.say(f"  {name}: pulling {source}")
        docker("pull", "-q", source, capture=True)
    docker("tag", source, dest, capture=True)
    progress.say(f"  {name}: pushing {dest}")
    out = docker("push", dest, capture=True)
    pushed = push_digest(out) or _repo_digest(dest, dest_repo)
    if pushed != digest:
        raise ImageError(f"{name}: {dest} was pushed as {pushed}, not as the tested {digest}")
    return {**built, "push_ref": f"{dest_repo}@{digest}"}


def push_images(cfg: dict, path: Path, names: list[str], push_registry: str) -> dict:
    """`release_image` for each of `names` in the images.json at `path`; rewrite it with
    their new `push_ref`s and return its `scirepo_images` part."""
    doc = load_images_json(path)
    ns = cfg["images"]["namespace"]
    for name in names:
        pushed = release_image(entry(doc, name), name, push_registry, ns)
        if name == HUB:
            doc["hub"] = pushed
        else:
            doc["stacks"][name] = pushed
        print(f"{name}: {pushed['push_ref']}", flush=True)
    write_images_json({"scirepo_images": doc}, path)
    return doc


# --------------------------------------------------------------------------- locks


def lock_targets(names: list[str] | None = None) -> list[str]:
    """Images that have a requirements.in, in locking order: the parent stack first (its
    lock constrains the other stacks'), the other stacks under images/, then the hub."""
    stacks = sorted(p.parent.name for p in (REPO / "images").glob("*/requirements.in"))
    found = [s for s in stacks if s == PARENT_STACK] + [s for s in stacks if s != PARENT_STACK]
    found.append(HUB)
    if not names:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ImageError(f"no requirements.in for {', '.join(unknown)}: one of {', '.join(found)}")
    return [n for n in found if n in names]


def lock_constraints(name: str) -> list[Path]:
    """Locks that constrain the lock of image `name`: a child stack installs into the venv
    of the parent stack, so every package the two share keeps the parent's pin."""
    if name in (HUB, PARENT_STACK):
        return []
    return [_paths(PARENT_STACK)[2] / "requirements.txt"]


def shared_pin_conflicts(parent_lock: str, child_lock: str) -> dict[str, tuple[str, str]]:
    """{package: (parent version, child version)} where a child's lock disagrees with its
    parent's: installed on top of the parent, such a pin would replace the parent's."""
    parent, child = read_lock(parent_lock), read_lock(child_lock)
    return {p: (parent[p], v) for p, v in child.items() if p in parent and parent[p] != v}


def clean_lock(text: str) -> str:
    """Drop index and find-links lines: a lock names packages and hashes, never a mirror."""
    drop = ("--index-url", "--extra-index-url", "-i ", "--find-links", "-f ", "--trusted-host")
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.lstrip().startswith(drop)
    )


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise ImageError("uv is needed to compile locks: pip install uv")
    return found


def lock(name: str, upgrade: bool = False) -> None:
    """Compile `requirements.in` of image `name` to `requirements.txt` with hashes.

    uv reads no pip configuration (--no-config also skips uv.toml), so a local index or
    wheel directory of this machine cannot leak into the lock; existing pins are kept
    unless `upgrade`. Wheels only: the images install with --only-binary :all:. A child
    stack's lock is compiled with the parent stack's lock as constraints (`lock_constraints`):
    it holds the child's whole environment, with the packages it shares with the parent at
    the parent's versions, so installing it on top of the parent changes none of those.
    """
    _, _, lock_dir = _paths(name)
    src, out = lock_dir / "requirements.in", lock_dir / "requirements.txt"
    constraints = []
    for path in lock_constraints(name):
        if not path.exists():
            raise ImageError(f"{path.relative_to(REPO)} is missing: lock {PARENT_STACK} first")
        # Relative: uv names it in the lock's "# via -c ..." comments.
        constraints += ["-c", str(path.relative_to(REPO))]
    cmd = [
        _uv(),
        "pip",
        "compile",
        "--quiet",
        "--no-config",
        "--python-version",
        LOCK_PYTHON,
        "--python-platform",
        LOCK_PLATFORM,
        "--generate-hashes",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--only-binary",
        ":all:",
        "--custom-compile-command",
        "make locks",
        *[arg for pkg in LOCK_OMIT for arg in ("--no-emit-package", pkg)],
        *constraints,
        str(src.relative_to(REPO)),
        "-o",
        str(out.relative_to(REPO)),
    ]
    if upgrade:
        cmd.append("--upgrade")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise ImageError(f"locking {src} failed:\n{res.stderr.strip()}")
    out.write_text(clean_lock(out.read_text()))
    progress.say(f"{out.relative_to(REPO)}: {len(read_lock(out.read_text()))} packages")
    if name == HUB:
        lock_proxy(upgrade)


def lock_proxy(upgrade: bool = False) -> None:
    """Refresh hub/proxy/package-lock.json (integrity hashes, no registry URLs)."""
    proxy = REPO / "hub" / "proxy"
    npm = shutil.which("npm")
    if not npm:
        progress.say("npm not found: hub/proxy/package-lock.json left as it is")
        return
    cmd = [
        npm,
        "update" if upgrade else "install",
        "--package-lock-only",
        "--ignore-scripts",
        "--omit-lockfile-registry-resolved",
        "--no-audit",
        "--no-fund",
    ]
    res = subprocess.run(cmd, cwd=proxy, capture_output=True, text=True)
    if res.returncode != 0:
        raise ImageError(f"npm lock in {proxy} failed:\n{res.stderr.strip()}")
    lock_file = proxy / "package-lock.json"
    data = json.loads(lock_file.read_text())
    # Belt and braces: "resolved" would name the registry this machine uses.
    for pkg in data.get("packages", {}).values():
        pkg.pop("resolved", None)
    lock_file.write_text(json.dumps(data, indent=2) + "\n")
    progress.say(f"{lock_file.relative_to(REPO)}: {len(data.get('packages', {})) - 1} packages")


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add the `images` verb to the `scirepo` command line."""
    parser = subparsers.add_parser(
        "images",
        help="build, push and lock the container images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build and push the images; write build/images.json")
    build.add_argument("--site", help="site file (default: --config, else site.yml)")
    build.add_argument(
        "--push-registry",
        metavar="HOST:PORT",
        help="registry to push to (default: images.registry)",
    )
    build.add_argument("--only", metavar="NAME", help="build only this stack, or hub")
    build.set_defaults(func=_cmd_build)

    push = actions.add_parser(
        "push",
        help="push images of an images.json, by digest and unchanged, to another registry",
    )
    push.add_argument("--site", help="site file (default: --config, else site.yml)")
    push.add_argument("--images-json", type=Path, default=IMAGES_JSON, metavar="PATH")
    push.add_argument("--push-registry", metavar="HOST:PORT[/PATH]", required=True)
    push.add_argument("names", nargs="+", metavar="NAME", help="stack or hub")
    push.set_defaults(func=_cmd_push)

    ref = actions.add_parser("ref", help="print the push_ref (digest reference) of an image")
    ref.add_argument("--images-json", type=Path, default=IMAGES_JSON, metavar="PATH")
    ref.add_argument("name", metavar="NAME", help="stack or hub")
    ref.set_defaults(func=_cmd_ref)

    lk = actions.add_parser(
        "lock",
        help="compile requirements.in to requirements.txt "
        "(with hashes) and refresh the proxy's npm lock",
    )
    lk.add_argument("names", nargs="*", metavar="NAME", help="stack or hub (default: all)")
    lk.add_argument("--upgrade", action="store_true", help="move pins to the newest versions")
    lk.set_defaults(func=_cmd_lock)


def _cmd_build(args) -> int:
    from scirepo import config as siteconfig  # noqa: PLC0415

    site = args.site or args.config or "site.yml"
    cfg = siteconfig.resolve(siteconfig.load(site))
    try:
        build_all(cfg, args.push_registry or cfg["images"]["registry"], only=args.only)
    except DockerError as exc:
        raise ImageError(str(exc)) from None
    return 0


def _cmd_push(args) -> int:
    from scirepo import config as siteconfig  # noqa: PLC0415

    site = args.site or args.config or "site.yml"
    cfg = siteconfig.resolve(siteconfig.load(site))
    try:
        push_images(cfg, args.images_json, args.names, args.push_registry)
    except DockerError as exc:
        raise ImageError(str(exc)) from None
    return 0


def _cmd_ref(args) -> int:
    print(entry(load_images_json(args.images_json), args.name)["push_ref"])
    return 0


def _cmd_lock(args) -> int:
    for name in lock_targets(args.names):
        lock(name, upgrade=args.upgrade)
    return 0
