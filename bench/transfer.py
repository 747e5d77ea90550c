"""Benchmark of `scirepo storage transfer` next to `cp -a` and `rsync -a` on the same data.

Not a test: it prints a table and writes build/bench/transfer.json. Two data sets, made
once in a scratch directory (default build/bench/transfer-scratch, on the file system of
the checkout; source and destination are always on the same file system):

- many small files: `--files` files of 4-64 KiB (random bytes) in directories of 100;
- one large file: `--large-mib` MiB of random bytes.

Each round, in turn, copies every data set with `cp -a` and `rsync -a`, and moves a fresh
copy of it with the real CLI (`python -m scirepo storage transfer`, a subprocess: its
start is included), each into the same empty destination (the transfer's: site data),
after the same preparation (the sandbox filled with a copy, then a `sync`) so that every
tool meets the file system in the same state: creating a file costs more right after many
were deleted nearby, and a destination elsewhere would favour one tool. The transfer also
hashes (SHA-256), syncs and reads back every file; cp and rsync do neither, so the table
also shows `rsync -a` followed by `sync` (the time until rsync's copy is on disk),
`rsync -a --remove-source-files` (a move, like the transfer: removing a large file costs
much on some disks, but rsync removes each source before its copy is on disk), and the two
ways rsync moves without that risk, as the transfer does: `rsync -a; sync; rm` (copy, sync
the file system, then remove the sources) and `rsync --fsync --remove-source-files` (each
copy fsynced before its source is removed). Medians of `--rounds` rounds, with the CPU
time (user + system) of each command; the transfer's result is checked file by file
against the source after each round (not timed). The CLI runs with its bytecode cached (in
the scratch directory, even under PYTHONDONTWRITEBYTECODE), as an installed package does,
and once before the timed rounds to fill that cache.

`--journaled` (root) measures everything a second time on an ext4 file system with a
journal, made in a sparse file next to the scratch directory and loop-mounted: a Debian
host's data disk has a journal, and there every sync waits for it, so the figures differ
much from those of a file system without one (as the root disk of some VMs is).

    .venv/bin/python bench/transfer.py [--files 5000] [--large-mib 1024] [--rounds 3]
                                       [--journaled]

Target: the transfer within 1.5x the time of `rsync -a`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "bench" / "transfer.json"


def make_small(root: Path, count: int, seed: int = 1) -> None:
    rnd = random.Random(seed)  # noqa: S311 - sizes and offsets, not secrets
    blob = os.urandom((64 << 10) + (4 << 20))  # slices of one random blob: quick to make
    for i in range(count):
        d = root / f"d{i // 100:04d}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(4 << 10, 64 << 10)
        start = rnd.randint(0, len(blob) - size)
        (d / f"f{i:06d}.dat").write_bytes(blob[start : start + size])


def make_large(root: Path, mib: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "large.dat", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            out[str(path.relative_to(root))] = h.hexdigest()
    return out


def timed(argv: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


@functools.cache
def rsync_has_fsync() -> bool:
    """Whether this rsync has --fsync (3.2.4 and later); asked once, said once if not."""
    help_text = subprocess.run(["rsync", "--help"], capture_output=True, text=True).stdout
    if "--fsync" not in help_text:
        print("rsync has no --fsync (it came in 3.2.4): that row is left out", file=sys.stderr)
    return "--fsync" in help_text


def cpu_seconds() -> float:
    """User plus system CPU time of the waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def fresh(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=REPO / "build" / "bench" / "transfer-scratch")
    ap.add_argument("--journaled", action="store_true",
                    help="also measure on an ext4 with a journal made in a file and "
                         "loop-mounted (root only)")  # fmt: skip
    args = ap.parse_args(argv)
    for name in ("files", "large_mib", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def journaled_size(args: argparse.Namespace) -> int:
    """Bytes of the ext4 image for `--journaled`: each data set three times (the data, the
    sandbox, site data; a small file at most 64 KiB) with a quarter left over, and room for
    the journal and the interpreter's bytecode."""
    data = args.files * (64 << 10) + (args.large_mib << 20)
    return data * 3 * 5 // 4 + (512 << 20)


@contextlib.contextmanager
def journaled_ext4(image: Path, mountpoint: Path, size: int):
    """An ext4 file system with a journal (mkfs.ext4's default, as on a Debian host's disk)
    in the sparse file `image`, loop-mounted on `mountpoint` while the block runs; yields
    a directory in it (the mount point itself cannot be removed as a scratch directory is)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "has_journal", str(image)], check=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint / "scratch"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("cp", "rsync"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (Debian: apt-get install -y {tool})")
    if args.journaled and os.geteuid() != 0:
        sys.exit("--journaled mounts a file system: run it as root")
    if args.journaled and not shutil.which("mkfs.ext4"):
        sys.exit("--journaled needs mkfs.ext4 (Debian: apt-get install -y e2fsprogs)")
    scratch = args.scratch.resolve()
    runs = [("checkout", scratch, contextlib.nullcontext(scratch))]
    if args.journaled:
        where = scratch.with_name(scratch.name + "-ext4")
        image = where.with_name(where.name + ".img")
        runs.append(("journaled ext4", where, journaled_ext4(image, where, journaled_size(args))))
    results, lines = [], []
    for fs, where, place in runs:
        with place as directory:
            rows, table = measure(directory, args)
        results += [{"fs": fs, **row} for row in rows]
        lines += [f"on the {fs} file system ({where}):", *table, ""]
    print("\n".join(lines).rstrip())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    OUT.write_text(json.dumps({"rounds": args.rounds, "loadavg_after": load, "results": results},
                              indent=1) + "\n")  # fmt: skip
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs): other work on the machine skews the times")  # fmt: skip
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


def measure(scratch: Path, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Every tool on every data set, `args.rounds` times, in `scratch` (removed after):
    the result rows and the table's lines."""
    fresh(scratch)
    data = scratch / "data"
    sets = {"small": data / "small", "large": data / "large"}
    print(f"making data in {scratch} ...", file=sys.stderr)
    make_small(sets["small"], args.files)
    make_large(sets["large"], args.large_mib)
    expected = {name: tree(path) for name, path in sets.items()}
    sizes = {name: sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
             for name, path in sets.items()}  # fmt: skip

    root = scratch / "srv"
    db = scratch / "state" / "catalog.db"
    clis = {}
    for mode in ("sha256", "compare"):
        site = scratch / f"site-{mode}.yml"
        site.write_text(
            f"site: {{name: bench}}\nstorage:\n  root: {root}\n  sites: [{{name: bench}}]\n"
            f"  transfer: {{verify: {mode}}}\n"
        )
        clis[f"transfer ({mode})"] = [
            sys.executable, "-m", "scirepo", "--config", str(site), "-q", "storage",
            "transfer", "--db", str(db), "--json",
        ]  # fmt: skip
    tools = ["cp -a", "rsync -a", "rsync -a; sync", "rsync --remove-source-files",
             "rsync -a; sync; rm", "rsync --fsync --remove-source-files", *clis]  # fmt: skip
    if not rsync_has_fsync():
        tools.remove("rsync --fsync --remove-source-files")
    # Compiling the modules on every start is not what the installed CLI does.
    cli_env = {**os.environ, "PYTHONPYCACHEPREFIX": str(scratch / "pycache")}
    cli_env.pop("PYTHONDONTWRITEBYTECODE", None)
    for argv in clis.values():  # nothing to move yet: fills the cache
        subprocess.run([*argv, "--dry-run"], cwd=REPO, env=cli_env, check=True,
                       capture_output=True)  # fmt: skip
    upload = root / "upload" / "bench"
    sitedata = root / "data" / "bench"

    times: dict[str, dict[str, list[float]]] = {n: {} for n in sets}
    inner: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    phases: dict[tuple[str, str], dict[str, list[float]]] = {}
    for rnd in range(args.rounds):
        for name, src in sets.items():
            runs = times[name]
            for tool in tools:
                fresh(sitedata)
                fresh(upload)
                if db.exists():
                    db.unlink()
                # The same state of the file system for every tool: the sandbox filled
                # (what the transfer and the move need; the others leave it), then the
                # copy made where the transfer puts it.
                upload.mkdir(parents=True)
                subprocess.run(["cp", "-a", f"{src}/.", str(upload / name)], check=True)
                (upload / name / ".complete").touch()
                sitedata.mkdir(parents=True)
                dest = sitedata / name
                os.sync()
                cpu0 = cpu_seconds()
                if tool == "cp -a":
                    sec = timed(["cp", "-a", str(src), str(dest)])
                elif tool == "rsync -a":
                    sec = timed(["rsync", "-a", f"{src}/", f"{dest}/"])
                elif tool == "rsync -a; sync":
                    sec = timed(["sh", "-c", 'rsync -a "$1/" "$2/" && sync', "sh", src, dest])
                elif tool == "rsync --remove-source-files":
                    sec = timed(["rsync", "-a", "--remove-source-files", f"{upload / name}/",
                                 f"{dest}/"])  # fmt: skip
                elif tool == "rsync -a; sync; rm":
                    sec = timed(["sh", "-c", 'rsync -a "$1/" "$2/" && sync && rm -r "$1"', "sh",
                                 upload / name, dest])  # fmt: skip
                elif tool == "rsync --fsync --remove-source-files":
                    sec = timed(["rsync", "-a", "--fsync", "--remove-source-files",
                                 f"{upload / name}/", f"{dest}/"])  # fmt: skip
                else:
                    t0 = time.perf_counter()
                    res = subprocess.run(clis[tool], cwd=REPO, env=cli_env, capture_output=True,
                                         text=True)  # fmt: skip
                    sec = time.perf_counter() - t0
                    report = json.loads(res.stdout) if res.returncode == 0 else None
                    if not report or report["counts"]["moved"] != len(expected[name]):
                        sys.exit(f"transfer failed ({res.returncode}): {res.stdout[-2000:]}"
                                 f"{res.stderr[-2000:]}")  # fmt: skip
                    inner.setdefault((name, tool), []).append(report["seconds"])
                    for phase, sec_ in report["timings"].items():
                        phases.setdefault((name, tool), {}).setdefault(phase, []).append(sec_)
                    got = tree(sitedata / name)
                    if got != expected[name]:
                        sys.exit(f"transfer of {name}: destination differs from the source")
                    if any(upload.joinpath(name).rglob("*.dat")):
                        sys.exit(f"transfer of {name}: files left in the sandbox")
                runs.setdefault(tool, []).append(sec)
                cpu.setdefault((name, tool), []).append(cpu_seconds() - cpu0)
                print(f"round {rnd + 1} {name:<5} {tool:<36} {sec:7.3f} s", file=sys.stderr)

    results = []
    header = (f"{'data':<28} {'tool':<36} {'seconds':>8} {'MB/s':>8} {'files/s':>9} "
              f"{'x rsync':>8} {'CPU s':>6}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for name in sets:
        count = len(expected[name])
        label = (f"{count} small files, {sizes[name] / 1e6:.0f} MB" if name == "small"
                 else f"1 file, {sizes[name] / 2**30:.2f} GiB")  # fmt: skip
        base = statistics.median(times[name]["rsync -a"])
        for tool, secs in times[name].items():
            sec = statistics.median(secs)
            row = {
                "data": name, "files": count, "bytes": sizes[name], "tool": tool,
                "seconds": round(sec, 3), "all_seconds": [round(s, 3) for s in secs],
                "mb_per_s": round(sizes[name] / 1e6 / sec, 1),
                "files_per_s": round(count / sec, 1), "ratio_to_rsync": round(sec / base, 2),
                "cpu_seconds": round(statistics.median(cpu[name, tool]), 3),
            }  # fmt: skip
            if tool in clis:
                row["seconds_inside_cli"] = round(statistics.median(inner[name, tool]), 3)
                row["phases"] = {k: round(statistics.median(v), 3)
                                 for k, v in phases[name, tool].items()}  # fmt: skip
            results.append(row)
            lines.append(f"{label:<28} {tool:<36} {sec:8.3f} {row['mb_per_s']:8.1f} "
                         f"{row['files_per_s']:9.1f} {row['ratio_to_rsync']:8.2f} "
                         f"{row['cpu_seconds']:6.2f}")  # fmt: skip
    for (name, tool), secs in inner.items():
        split = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in phases[name, tool].items())
        lines.append(f"{tool} of {name}: {statistics.median(secs):.3f} s inside the CLI "
                     f"(without interpreter start and config loading): {split}")  # fmt: skip
    fresh(scratch)
    return results, lines


if __name__ == "__main__":
    sys.exit(main())
