"""Platform benchmark: scirepo next to a stock JupyterHub + DockerSpawner (`make bench`).

Not a test: it measures both deployments with the same code (bench/harness.py), one after
the other, prints one table (figure, scirepo, stock, ratio scirepo/stock, target, pass or
fail of scirepo against the target) and writes everything to build/bench/platform.json.

- scirepo: the local repository host of the tree given by --root (default: this one),
  which `make up` started; users are made with `scirepo user add` on the host and
  removed at the end.
- stock: bench/stock.py builds and starts it on this machine's engine before its turn
  and removes it afterwards (--keep-stock leaves it running).

    .venv/bin/python bench/run.py                       # everything, both deployments
    .venv/bin/python bench/run.py --only stock --n 2 --users 2 --rounds 1
    .venv/bin/python bench/run.py --figures spawn,browser

Figures (--figures, comma separated; the default is all of them, and with --root another
tree all but `accounts`):
  spawn     one user's spawn, --rounds times, a new user each round
  many      N users at once for each --n; memory of idle servers, hub and proxy
  capacity  idle servers within --budget-mib, from the `many` figures of the largest N
            (--verify-capacity also starts servers one by one until the budget is spent)
  browser   login form submit to rendered JupyterLab in headless Chromium: a first
            visit with no server and with the server up, a returning browser
  load      --users simulated users over --ramp seconds: login, start, run a cell, stop
  accounts  approval to SSH login (scirepo only; runs bench/accounts.py, which measures
            this tree's host, so not with --root another tree)
  makeup    `make up` wall time, run first: warm (a second `make up`) and, with
            --destructive, cold (`make clean` first: a new host from the built images;
            it deletes the host's data); stock: its start from nothing with the image built
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import targets  # noqa: E402

OUT = REPO / "build" / "bench" / "platform.json"
ALL_FIGURES = ("spawn", "many", "capacity", "browser", "load", "accounts", "makeup")
# Targets of issue 7: (op, value) per figure key; scirepo passes when `value op target`.
TARGETS = {
    "spawn_one_p50": ("<", 1.5),
    "many_10_all_ready": ("<", 10.0),
    "login_lab_cold_p50": ("<", 3.0),
    "idle_server_mib": ("<", 80.0),
    "load_errors": ("==", 0),
    "approval_ssh_p50": ("<", 2.0),
}


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need numbers of at least 1: {text!r}")
    return values


def figure_list(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = sorted(set(names) - set(ALL_FIGURES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown figure(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(ALL_FIGURES)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    p.add_argument("--only", choices=["scirepo", "stock"], help="measure one deployment")
    p.add_argument("--figures", type=figure_list,
                   help="comma separated (default: all; with --root another tree, all but "
                   "accounts)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="spawns of one user (default 5)")
    p.add_argument("--n", type=positive_ints, default=[5, 10, 20],
                   help="users spawning at once, comma separated (default 5,10,20)")  # fmt: skip
    p.add_argument("--users", type=int, default=50, help="simulated users of `load` (50)")
    p.add_argument("--ramp", type=float, default=10.0,
                   help="seconds over which the simulated users begin (default 10)")  # fmt: skip
    p.add_argument("--browser-rounds", type=int, default=3, help="browser logins (3)")
    p.add_argument("--budget-mib", type=float, default=4096.0,
                   help="memory budget of `capacity`, MiB (default 4096)")  # fmt: skip
    p.add_argument("--verify-capacity", action="store_true",
                   help="start servers until the budget is spent (slow)")  # fmt: skip
    p.add_argument("--capacity-limit", type=int, default=100,
                   help="most servers --verify-capacity starts (default 100)")  # fmt: skip
    p.add_argument("--settle", type=float, default=60.0,
                   help="longest wait for memory to settle, s (default 60)")  # fmt: skip
    p.add_argument("--accounts-rounds", type=int, default=4,
                   help="accounts: signups approved, then SSH logins (default 4)")  # fmt: skip
    p.add_argument("--destructive", action="store_true",
                   help="makeup: also the cold `make up` after `make clean` (deletes the "
                   "local host's data)")  # fmt: skip
    p.add_argument("--root", type=Path, default=REPO,
                   help="tree whose local host is measured: its site.yml, .scirepo/ and "
                   "build/images.json (default: this tree)")  # fmt: skip
    p.add_argument("--site", type=Path, help="site config (default ROOT/site.yml)")
    p.add_argument("--images-json", type=Path,
                   help="image digests; the stock hub spawns stacks.base from it "
                   "(default ROOT/build/images.json)")  # fmt: skip
    p.add_argument("--stock-port", type=int, default=18000)
    p.add_argument("--keep-stock", action="store_true", help="leave the stock hub running")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for name in ("rounds", "users", "browser_rounds", "accounts_rounds", "capacity_limit"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.ramp < 0 or args.budget_mib <= 0 or args.settle < 0:
        p.error("--ramp and --settle must not be negative, --budget-mib must be positive")
    # Absolute: `make -C ROOT` and bench/accounts.py run in other directories.
    args.root = args.root.resolve()
    # bench/accounts.py reads this tree's .scirepo/: it cannot measure another tree's host.
    if args.figures is None:
        args.figures = [f for f in ALL_FIGURES if f != "accounts" or args.root == REPO]
    elif "accounts" in args.figures and args.root != REPO:
        p.error(f"--figures accounts measures this tree's host ({REPO}), not --root {args.root}")
    args.site = args.site.resolve() if args.site else None
    args.images_json = args.images_json or args.root / "build" / "images.json"
    return args


# --------------------------------------------------------------------------- measuring


def measure(target: targets.Target, args: argparse.Namespace) -> dict:
    """Every chosen figure of one deployment; a figure that fails is recorded as an error
    and the others still run."""
    res: dict = {"errors": {}}
    figures = args.figures

    def attempt(name: str, fn) -> None:
        print(f"{target.name}: {name}", flush=True)
        try:
            res[name] = fn()
        except Exception as err:  # noqa: BLE001 - reported in the table and the JSON
            res["errors"][name] = f"{type(err).__name__}: {err}"
            print(f"  {target.name}: {name} failed: {err}", flush=True)

    if "makeup" in figures:
        attempt("makeup", lambda: makeup(target, args))
    t0 = time.monotonic()
    target.setup()
    res["setup_s"] = time.monotonic() - t0
    try:
        if "spawn" in figures:
            attempt("spawn", lambda: harness.spawn_one(target, args.rounds))
        if "many" in figures or "capacity" in figures:
            many = {}
            for n in args.n:
                attempt(f"many_{n}", lambda n=n: harness.spawn_many(target, n, args.settle))
                if f"many_{n}" in res:
                    many[n] = res.pop(f"many_{n}")
            res["many"] = many
        if "capacity" in figures:
            attempt("capacity", lambda: capacity(target, res.get("many", {}), args))
        if "browser" in figures:
            attempt("browser", lambda: harness.browser(target, args.browser_rounds))
        if "load" in figures:
            attempt("load", lambda: harness.load(target, args.users, args.ramp))
        if "accounts" in figures and target.name == "scirepo":
            attempt("accounts", lambda: accounts(args))
    finally:
        target.teardown()
    if "makeup" in figures and target.name == "stock":
        # Stock's start from nothing (its image built) is what its setup just did.
        res["makeup"] = {"cold_s": getattr(target, "start_s", None), "warm_s": None}
    return res


def capacity(target: targets.Target, many: dict, args: argparse.Namespace) -> dict:
    with_memory = [n for n in sorted(many) if "memory" in many[n]]
    if not with_memory:
        raise RuntimeError("no memory figures: the `many` figure did not run or failed")
    memory = many[with_memory[-1]]["memory"]
    out = {
        "budget_mib": args.budget_mib,
        "from_n": with_memory[-1],
        "computed": harness.capacity_computed(memory, args.budget_mib),
    }
    if args.verify_capacity:
        out["verified"] = harness.capacity_verified(target, args.budget_mib, args.capacity_limit)[
            "servers"
        ]
    return out


def accounts(args: argparse.Namespace) -> dict:
    """bench/accounts.py of this tree, which reads this tree's .scirepo/ (parse_args
    refuses it with --root another tree)."""
    site = args.site or REPO / "site.yml"
    cmd = [sys.executable, str(REPO / "bench" / "accounts.py"), "--site", str(site),
           "--rounds", str(args.accounts_rounds)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO)
    rows = json.loads((REPO / "build" / "bench" / "accounts.json").read_text())
    return {r["figure"]: r for r in rows}


def makeup(target: targets.Target, args: argparse.Namespace) -> dict:
    """`make up` wall time of the scirepo tree at --root; stock's is its setup."""
    if target.name != "scirepo":
        return {}
    make = ["make", "-C", str(args.root)] + ([f"SITE={args.site}"] if args.site else [])
    out: dict = {"cold_s": None}
    if args.destructive:
        subprocess.run([*make, "clean"], check=True)
        t0 = time.monotonic()
        subprocess.run([*make, "up"], check=True)
        out["cold_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run([*make, "up"], check=True)
    out["warm_s"] = time.monotonic() - t0
    return out


# --------------------------------------------------------------------------- reporting


def _get(res: dict, *path):
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return None
        res = res[key]
    return res


def rows_of(results: dict, args: argparse.Namespace) -> list[dict]:
    """The table: one row per figure, values of each deployment side by side."""
    spec: list[tuple[str, str, tuple]] = [
        ("spawn_one_p50", "one spawn p50 (s)", ("spawn", "spawn_one", "p50")),
        ("spawn_one_p95", "one spawn p95 (s)", ("spawn", "spawn_one", "p95")),
        ("spawn_one_max", "one spawn max (s)", ("spawn", "spawn_one", "max")),
    ]
    for n in args.n:
        spec += [
            (f"many_{n}_p50", f"{n} at once: spawn p50 (s)", ("many", n, "spawn", "p50")),
            (f"many_{n}_p95", f"{n} at once: spawn p95 (s)", ("many", n, "spawn", "p95")),
            (f"many_{n}_max", f"{n} at once: spawn max (s)", ("many", n, "spawn", "max")),
            (f"many_{n}_all_ready", f"{n} at once: all ready (s)", ("many", n, "all_ready")),
            (f"many_{n}_hub_proxy_mib", f"hub + proxy, {n} at once up (MiB)",
             ("many", n, "memory", "hub_proxy_mib")),
        ]  # fmt: skip
    largest = max(args.n)
    spec += [
        ("idle_server_mib", f"idle server, median of {largest} (MiB)",
         ("many", largest, "memory", "server_mib")),
        ("capacity_computed", f"idle servers in {args.budget_mib:.0f} MiB (computed)",
         ("capacity", "computed")),
        ("capacity_verified", f"idle servers in {args.budget_mib:.0f} MiB (started)",
         ("capacity", "verified")),
        ("login_lab_cold_p50", "login to JupyterLab, no server, p50 (s)",
         ("browser", "login_lab_cold", "p50")),
        ("login_lab_warm_p50", "login to JupyterLab, server up, p50 (s)",
         ("browser", "login_lab_warm", "p50")),
        ("login_lab_returning_p50",
         "login to JupyterLab, no server, returning browser, p50 (s)",
         ("browser", "login_lab_returning", "p50")),
        ("load_errors", f"load, {args.users} users: errors", ("load", "errors")),
    ]  # fmt: skip
    for step in harness.STEPS:
        spec.append((f"load_{step}_p95", f"load: {step} p95 (s)", ("load", step, "p95")))
    spec += [
        ("approval_ssh_p50", "approval to SSH login, median (s)",
         ("accounts", "approval (review page) to SSH login", "median_s")),
        ("makeup_cold", "make up (stock: start), cold (s)", ("makeup", "cold_s")),
        ("makeup_warm", "make up, warm (s)", ("makeup", "warm_s")),
    ]  # fmt: skip
    rows = []
    for key, label, path in spec:
        sci, sto = _get(results.get("scirepo", {}), *path), _get(results.get("stock", {}), *path)
        if sci is None and sto is None:
            continue
        ratio = sci / sto if isinstance(sci, int | float) and sto else None
        target = TARGETS.get(key)
        verdict = None
        if target and sci is not None:
            op, value = target
            verdict = sci < value if op == "<" else sci == value
        rows.append({"key": key, "figure": label, "scirepo": sci, "stock": sto,
                     "ratio": ratio, "target": target, "pass": verdict})  # fmt: skip
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def print_table(rows: list[dict], results: dict) -> None:
    w = max([42, *(len(r["figure"]) for r in rows)])
    print(f"\n{'figure':<{w}} {'scirepo':>8} {'stock':>8} {'ratio':>6} {'target':>8}  result")
    for r in rows:
        target = f"{r['target'][0]} {r['target'][1]}" if r["target"] else "-"
        verdict = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        print(f"{r['figure']:<{w}} {_fmt(r['scirepo']):>8} {_fmt(r['stock']):>8} "
              f"{_fmt(r['ratio']):>6} {target:>8}  {verdict}")  # fmt: skip
    for name, res in results.items():
        for figure, err in res.get("errors", {}).items():
            print(f"{name}: {figure} failed: {err}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [args.only] if args.only else ["scirepo", "stock"]
    results: dict = {}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    probes: dict[str, dict[str, float]] = {}
    for name in chosen:
        probes[name] = {"before": cpu_probe()}
        try:
            if name == "scirepo":
                target: targets.Target = targets.Scirepo(args.root, args.site)
            else:
                target = targets.Stock(args.images_json, args.stock_port, keep=args.keep_stock)
            results[name] = measure(target, args)
        except Exception as err:  # noqa: BLE001 - the other deployment is still measured
            print(f"{name}: cannot be measured: {err}", file=sys.stderr)
            results[name] = {"errors": {"setup": f"{type(err).__name__}: {err}"}}
        probes[name]["after"] = cpu_probe()
    rows = rows_of(results, args)
    print_table(rows, results)
    print(f"\nCPU probe, seconds of a {PROBE_STEPS:,}-step Python loop before and after each "
          "deployment's turn (compare figures only at like probes):")  # fmt: skip
    for name, probe in probes.items():
        print(f"  {name}: {probe['before']:.2f} s before, {probe['after']:.2f} s after")
    report = {
        "started": started,
        "machine": {
            "cpus": os.cpu_count(),
            "python": pyplatform.python_version(),
            "mem_total_mib": _mem_total_mib(),
            "cpu_probe_s": probes,
        },  # fmt: skip
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
        "table": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwritten to {args.out}")
    failed = any(r.get("errors") for r in results.values())
    return 1 if failed else 0


PROBE_STEPS = 10_000_000


def cpu_probe(steps: int = PROBE_STEPS) -> float:
    """Seconds of a fixed pure-Python loop on this machine, now: on shared virtual
    machines the same figures can differ twofold within the hour, and so does this."""
    t0 = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return time.perf_counter() - t0


def _mem_total_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
