"""Benchmark of the notebook images: build times, sizes and import time, per image.

Not a test: it prints a table and writes build/bench/images.json. For every stack of the
site config, parent first:

- cold build: `docker build --no-cache` (BuildKit's pip cache mount is kept, so wheels come
  from the local cache, not the network), then the push;
- rebuild with nothing changed: the same build again with the cache (target: under 10 s);
- compressed size: the sum of the layer sizes in the manifest the registry holds;
- uncompressed size: `docker image inspect -f {{.Size}}`;
- import time of the headline package (the first one in its requirements.in), in a fresh
  container each time, best of 3.

    .venv/bin/python bench/images.py --site site.yml --push-registry 127.0.0.1:5599

The push registry must speak plain HTTP (a loopback registry) for the manifest query, or
HTTPS with a certificate this machine trusts. `--warm` skips the cold builds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scirepo import config as siteconfig  # noqa: E402
from scirepo import images  # noqa: E402
from scirepo.dockercli import DOCKER, docker  # noqa: E402

OUT = images.BUILD / "bench" / "images.json"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)
# Measured in the image: seconds to import the module of distribution argv[1].
IMPORT_TIMER = r"""
import importlib, importlib.metadata as md, re, sys, time
dist = sys.argv[1]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
mods = [m for m, ds in md.packages_distributions().items() if dist in map(norm, ds)]
mod = dist.replace("-", "_") if dist.replace("-", "_") in mods else sorted(mods)[0]
t0 = time.perf_counter()
importlib.import_module(mod)
print(time.perf_counter() - t0)
"""


def compressed_size(push_registry: str, push_ref: str) -> int:
    """Sum of the layer sizes of the manifest `push_ref` (repo@digest) at the registry."""
    repo, digest = push_ref.split("@", 1)
    path = repo.split("/", 1)[1]
    scheme = "http" if push_registry.startswith(("127.", "localhost")) else "https"
    req = urllib.request.Request(  # noqa: S310 - http(s) to the push registry
        f"{scheme}://{push_registry}/v2/{path}/manifests/{digest}",
        headers={"Accept": MANIFEST_TYPES},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the push registry
        doc = json.loads(resp.read())
    return sum(layer["size"] for layer in doc["layers"])


def uncompressed_size(ref: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", ref, capture=True).strip())


def import_seconds(ref: str, dist: str, runs: int = 3) -> float:
    """Best of `runs` fresh containers, as an unprivileged user with a writable HOME."""
    best = float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [DOCKER, "run", "--rm", "--user", "65534:65534", "-e", "HOME=/tmp", ref,
             "python", "-c", IMPORT_TIMER, dist],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        best = min(best, float(out.strip().splitlines()[-1]))
    return best


def headline(name: str) -> str | None:
    path = REPO / "images" / name / "requirements.in"
    return images.headline(path.read_text()) if path.exists() else None


def bench(cfg: dict, push_registry: str, warm: bool) -> dict:
    names = [n for n in images.build_order(list(cfg["images"]["stacks"])) if n != images.HUB]
    images.ensure_base_image(cfg)
    images.build_runtime(cfg)
    revision = images.git_revision()
    results, parent_ref = {}, None
    for name in names:
        base_ref = parent_ref if name != images.PARENT_STACK else None
        row: dict = {"headline": headline(name)}
        if not warm:
            cold = images.build_image(
                cfg, name, push_registry, base_ref=base_ref, revision=revision, no_cache=True
            )
            row["cold_build_s"] = cold["seconds"]["build"]
            row["cold_push_s"] = cold["seconds"]["push"]
        again = images.build_image(cfg, name, push_registry, base_ref=base_ref, revision=revision)
        row["rebuild_s"] = again["seconds"]["build"]
        row["rebuild_push_s"] = again["seconds"]["push"]
        if name == images.PARENT_STACK:
            parent_ref = again["push_ref"]
        row["push_ref"] = again["push_ref"]
        row["compressed_bytes"] = compressed_size(push_registry, again["push_ref"])
        row["uncompressed_bytes"] = uncompressed_size(again["push_ref"])
        if row["headline"]:
            row["import_s"] = import_seconds(again["push_ref"], row["headline"])
        results[name] = row
        print(f"[bench] {name}: {json.dumps(row)}", flush=True)
    return results


def table(results: dict) -> str:
    head = ("image", "cold build", "rebuild", "compressed", "uncompressed", "import (pkg)")
    rows = [head]
    for name, r in results.items():
        cold = f"{r['cold_build_s']:.1f} s" if "cold_build_s" in r else "-"
        imp = f"{r['import_s']:.2f} s ({r['headline']})" if "import_s" in r else "-"
        rows.append(
            (
                name,
                cold,
                f"{r['rebuild_s']:.1f} s",
                f"{r['compressed_bytes'] / 1e6:.0f} MB",
                f"{r['uncompressed_bytes'] / 1e6:.0f} MB",
                imp,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="site.yml", help="site file (default: site.yml)")
    parser.add_argument("--push-registry", required=True, metavar="HOST:PORT")
    parser.add_argument("--warm", action="store_true", help="skip the cold (--no-cache) builds")
    args = parser.parse_args()
    cfg = siteconfig.resolve(siteconfig.load(args.site))
    results = bench(cfg, args.push_registry, args.warm)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table(results))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
