#!/usr/bin/python3
"""Remove the scirepo images a host no longer needs (installed by the Ansible role `images`).

An image is removed when all of these hold:
- it is in one of the platform's repositories (`--repository-prefix`, that is
  `<images.registry>/<namespace>/`): other images on the host are never touched;
- none of its digest references (`repo@sha256:...`) is named by an images.json given with
  `--images-json` (a missing file names nothing) or by `--keep`;
- no container uses it, running or stopped (a user's server keeps its image).

Images are removed by reference with `docker image rm`, never forced, so Docker itself also
refuses to remove an image that a container created meanwhile uses. Prints `removed REF` for
each removed reference, `kept REF: ...` for a stale one a container still uses; exits 0 unless
Docker could not be asked (a refused removal is reported on stderr and left for next time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def refs_of(images: dict) -> set[str]:
    """Digest references of the `scirepo_images` part of an images.json."""
    refs = {images["hub"]["ref"]} if images.get("hub") else set()
    return refs | {s["ref"] for s in images.get("stacks", {}).values() if s.get("ref")}


def platform_images(prefix: str) -> dict[str, set[str]]:
    """{image ID: its digest references} of the images in the platform's repositories."""
    found: dict[str, set[str]] = {}
    out = docker(
        "image", "ls", "--digests", "--no-trunc", "--format", "{{.ID}} {{.Repository}} {{.Digest}}"
    )
    for line in out.splitlines():
        image_id, repo, digest = line.split()
        if repo.startswith(prefix) and digest.startswith("sha256:"):
            found.setdefault(image_id, set()).add(f"{repo}@{digest}")
    return found


def images_in_use() -> dict[str, list[str]]:
    """{image ID: names of the containers (running or stopped) created from it}."""
    ids = docker("container", "ls", "--all", "--quiet", "--no-trunc").split()
    if not ids:
        return {}
    used: dict[str, list[str]] = {}
    out = docker("container", "inspect", "--format", "{{.Image}} {{.Name}}", *ids)
    for line in out.splitlines():
        image_id, name = line.split(maxsplit=1)
        used.setdefault(image_id, []).append(name.lstrip("/"))
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository-prefix", required=True, metavar="REGISTRY/NAMESPACE/")
    parser.add_argument("--images-json", type=Path, action="append", default=[], metavar="PATH")
    parser.add_argument("--keep", action="append", default=[], metavar="REF")
    parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    args = parser.parse_args(argv)

    keep = set(args.keep)
    for path in args.images_json:
        if path.exists():
            keep |= refs_of(json.loads(path.read_text())["scirepo_images"])
    if not keep:
        # No images.json yet and nothing named: pruning would remove every platform image.
        print("no image to keep is known: nothing pruned", file=sys.stderr)
        return 0
    used = images_in_use()
    for image_id, refs in sorted(platform_images(args.repository_prefix).items()):
        if refs & keep:
            continue
        for ref in sorted(refs):
            if image_id in used:
                print(f"kept {ref}: used by {', '.join(sorted(used[image_id]))}")
            elif args.dry_run:
                print(f"would remove {ref}")
            else:
                res = subprocess.run(["docker", "image", "rm", ref], capture_output=True, text=True)
                if res.returncode == 0:
                    print(f"removed {ref}")
                else:
                    print(f"not removed {ref}: {res.stderr.strip()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
