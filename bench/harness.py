"""Measurements of a hub deployment, the same code for scirepo and the stock baseline.

Each function takes a `targets.Target` and returns plain numbers (seconds, MiB, counts)
in a dict; bench/run.py puts them side by side. Concurrency is threads (the work is
waiting on the network); every latency list is summarised by `summary`.

- `spawn_one`: a new user per round, from the start request to the server's first answer
  through the proxy (HubUser.start_server with the hub's progress events, no polling).
- `spawn_many`: N users logged in beforehand start at the same instant; each one's time
  from its own request, and the time until the last one answered. While the N servers
  are up and idle, the memory of each server and of the hub and proxy.
- `capacity`: idle servers that fit a memory budget, computed from those figures, and
  optionally verified by starting servers one by one until the budget is spent.
- `browser`: headless Chromium from the login form's submit until JupyterLab's main area
  shows the Launcher (first `.jp-LauncherCard` visible: a fresh JupyterLab opens the
  Launcher there, and draws its cards only once the server has sent the kernel specs);
  once with no server running (the spawn is part of it) and once with the server up,
  each in a new browser context (no cookies, no cache: a person's first visit); then as a
  returning user: a browser profile on disk that has shown this user's JupyterLab before
  (its HTTP and compiled-code caches), its cookies gone (logged out), no server running.
- `load`: M simulated users, started over a ramp, each logging in, starting a server,
  running a cell and stopping the server, as hubtraf does; errors per step and latency
  percentiles per step.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from targets import Target

from scirepo.browser import ARGS, CHROMIUM, MISSING
from scirepo.hubclient import HubUser

VIEWPORT = {"width": 1280, "height": 900}
SPAWN_DEADLINE = 180.0


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict:
    """n, p50, p95, max and mean of a list of measurements (empty: just n = 0)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def api_login(target: Target, name: str, password: str) -> HubUser:
    """`name`'s session with the hub's API (not timed); a refused login is an error."""
    hub = target.client(name)
    if not hub.login(password):
        raise RuntimeError(f"{target.name}: {name} cannot log in")
    return hub


def logged_in(target: Target, n: int) -> list[HubUser]:
    """n new users of the target, logged in (not timed)."""
    users = target.new_users(n)
    with ThreadPoolExecutor(min(n, 8)) as pool:
        return list(pool.map(lambda pair: api_login(target, *pair), users))


def stop_all(hubs: list[HubUser]) -> None:
    """Stop every server, a few at a time; a failure is reported, not raised (cleanup)."""

    def stop(hub: HubUser) -> None:
        try:
            hub.stop_server(deadline=120)
        except Exception as err:  # noqa: BLE001 - cleanup goes on with the others
            print(f"warning: stopping {hub.name}: {err}")

    with ThreadPoolExecutor(min(max(len(hubs), 1), 8)) as pool:
        list(pool.map(stop, hubs))


# --------------------------------------------------------------------------- spawn


def spawn_one(target: Target, rounds: int) -> dict:
    """One user at a time, a new one each round (a new container on both deployments)."""
    times = []
    for hub in logged_in(target, rounds):
        try:
            times.append(hub.start_server(deadline=SPAWN_DEADLINE, progress=True))
            print(f"  {target.name}: one spawn {times[-1]:.2f} s", flush=True)
        finally:
            stop_all([hub])
    return {"spawn_one": summary(times), "spawn_one_values": times}


def spawn_many(target: Target, n: int, settle: float = 60.0) -> dict:
    """N users start at once; then memory with N idle servers; then they stop."""
    hubs = logged_in(target, n)
    barrier = threading.Barrier(n + 1)
    results: list[float | Exception] = [0.0] * n
    finished: list[float] = [0.0] * n

    def start(i: int) -> None:
        barrier.wait()
        try:
            results[i] = hubs[i].start_server(deadline=SPAWN_DEADLINE, progress=True)
        except Exception as err:  # noqa: BLE001 - counted as an error of this run
            results[i] = err
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        times = [r for r in results if isinstance(r, float)]
        errors = [f"{hubs[i].name}: {r}" for i, r in enumerate(results) if isinstance(r, Exception)]
        out = {
            "n": n,
            "spawn": summary(times),
            "all_ready": max(finished) - t0 if not errors else None,
            "errors": errors,
        }
        print(f"  {target.name}: {n} at once: p50 {out['spawn'].get('p50', 0):.2f} s, "
              f"all ready {out['all_ready'] or float('nan'):.2f} s, {len(errors)} errors",
              flush=True)  # fmt: skip
        up = [h.name for h, r in zip(hubs, results, strict=True) if isinstance(r, float)]
        if up:
            out["memory"] = idle_memory(target, up, settle)
        return out
    finally:
        stop_all(hubs)


def idle_memory(target: Target, users: list[str], settle: float) -> dict:
    """Memory of idle servers and of the hub and proxy, once it has settled: sampled until
    two samples in a row agree within 2 % (a fresh server is still importing and
    allocating), or until `settle` seconds have passed (the last sample then)."""
    names = [target.server_container(u) for u in users]
    deadline = time.monotonic() + settle
    previous, delay = None, 1.0
    while True:
        sample = target.memory([*names, *target.hub_containers])
        missing = [n for n in [*names, *target.hub_containers] if n not in sample]
        if missing:
            raise RuntimeError(f"{target.name}: no memory figure for {missing}")
        total = sum(sample[n] for n in [*names, *target.hub_containers])
        stable = previous is not None and abs(total - previous) <= 0.02 * previous
        if stable or time.monotonic() > deadline:
            break
        previous = total
        time.sleep(delay)  # spaces the samples: a fresh server still grows for a while
        delay = min(delay * 1.5, 5.0)
    servers = [sample[n] for n in names]
    return {
        "servers": len(servers),
        "server_mib": statistics.median(servers),
        "server_mib_max": max(servers),
        "hub_mib": {n: sample[n] for n in target.hub_containers},
        "hub_proxy_mib": sum(sample[n] for n in target.hub_containers),
        "settled": stable,
    }


# --------------------------------------------------------------------------- capacity


def capacity_computed(memory: dict, budget_mib: float) -> int:
    """Idle servers that fit in the budget: what the hub and proxy leave, divided by the
    median idle server (both measured with N servers running)."""
    if memory["server_mib"] <= 0:
        raise RuntimeError(f"an idle server measured {memory['server_mib']} MiB: not credible")
    free = budget_mib - memory["hub_proxy_mib"]
    return max(int(free // memory["server_mib"]), 0)


def capacity_verified(target: Target, budget_mib: float, limit: int) -> dict:
    """Start servers one by one until the measured total (hub, proxy, servers) would pass
    the budget with one more, or `limit` servers run; all are stopped afterwards."""
    if limit < 1:
        raise ValueError("the capacity check needs a limit of at least one server")
    hubs: list[HubUser] = []
    total = 0.0
    try:
        while len(hubs) < limit:
            hub = logged_in(target, 1)[0]
            hubs.append(hub)
            hub.start_server(deadline=SPAWN_DEADLINE, progress=True)
            mem = idle_memory(target, [h.name for h in hubs], settle=20)
            total = mem["hub_proxy_mib"] + mem["server_mib"] * mem["servers"]
            print(f"  {target.name}: {len(hubs)} servers, {total:.0f} MiB", flush=True)
            if total + mem["server_mib_max"] > budget_mib:
                break
        return {"servers": len(hubs), "total_mib": total, "limit_reached": len(hubs) >= limit}
    finally:
        stop_all(hubs)


# --------------------------------------------------------------------------- browser


def browser(target: Target, rounds: int) -> dict:
    """Login form submit to a rendered JupyterLab: a first visit without and with a running
    server, and a returning browser without a running server."""
    if not CHROMIUM.exists():
        raise RuntimeError(MISSING)
    from playwright.sync_api import sync_playwright

    cold, warm, returning = [], [], []
    users = target.new_users(rounds)
    # Each user's API session, to stop the server between logins (the browser's are apart).
    hubs = {name: api_login(target, name, password) for name, password in users}
    args = [*ARGS, *target.browser_args()]

    def report(kind: str, seconds: float) -> None:
        print(f"  {target.name}: login to JupyterLab ({kind}) {seconds:.2f} s", flush=True)

    with sync_playwright() as pw:
        # Playwright gives this browser a fresh temporary profile of its own.
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            for name, password in users:
                # A new context each time: no cookies, no cache, as a person arriving.
                for into, kind in ((cold, "no server"), (warm, "server up")):
                    context = chromium.new_context(viewport=VIEWPORT)
                    try:
                        into.append(_login_to_lab(context, target.url, name, password))
                    finally:
                        context.close()
                    report(kind, into[-1])
                stop_all([hubs[name]])
        finally:
            chromium.close()
        for name, password in users:
            # A profile on disk, as a person's own browser: the first visit fills its
            # caches (not counted); then logged out (no cookies), the server stopped.
            with tempfile.TemporaryDirectory(prefix="scirepo-bench-profile-") as profile:
                context = pw.chromium.launch_persistent_context(
                    profile, executable_path=str(CHROMIUM), args=args, viewport=VIEWPORT
                )
                try:
                    _login_to_lab(context, target.url, name, password)
                    stop_all([hubs[name]])
                    context.clear_cookies()
                    returning.append(_login_to_lab(context, target.url, name, password))
                    report("no server, returning browser", returning[-1])
                finally:
                    context.close()
            stop_all([hubs[name]])
    return {
        "login_lab_cold": summary(cold),
        "login_lab_warm": summary(warm),
        "login_lab_returning": summary(returning),
    }


# A person in a hurry: the page itself submits the spawn form (with the default stack) or
# presses a hub's Start button as soon as its HTML is parsed, each at most once in the
# page's tab (a form shown again, with an error, is left for the deadline to report).
# Clicking through Playwright instead costs several round trips between the driver and the
# page (0.1-0.2 s on these 2 cores) that are the benchmark's, not the platform's.
HURRY = """
addEventListener("DOMContentLoaded", () => {
  if (!location.pathname.includes("/hub/")) return;
  for (const selector of ["#spawn_form [type=submit]", "a#start"]) {
    const button = document.querySelector(selector);
    const key = "scirepo-bench-pressed " + selector;
    if (button && !sessionStorage.getItem(key)) {
      sessionStorage.setItem(key, "1");
      button.click();
      return;
    }
  }
});
"""


def _login_to_lab(context, url: str, name: str, password: str, deadline: float = 180) -> float:
    """Seconds from the login form's submit to JupyterLab's first Launcher card, in a new
    page of `context` (the page is closed afterwards; the context is the caller's)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = context.new_page()
    try:
        page.goto(f"{url}/hub/login", timeout=60_000)
        page.fill("#username_input", name)
        page.fill("#password_input", password)
        # The way to JupyterLab differs: scirepo offers several stacks, so its spawn form
        # appears; a hub may also land on its home page. HURRY goes on from either.
        page.add_init_script(HURRY)
        launcher = page.locator("#jp-main-dock-panel .jp-LauncherCard").first
        t0 = time.perf_counter()
        page.click("#login_submit")
        try:
            launcher.wait_for(state="visible", timeout=deadline * 1000)
        except PlaywrightTimeout:
            raise RuntimeError(f"no JupyterLab for {name} in {deadline} s ({page.url})") from None
        return time.perf_counter() - t0
    finally:
        page.close()


# --------------------------------------------------------------------------- load

STEPS = ("login", "start", "run", "stop")


def load(target: Target, users: int, ramp: float) -> dict:
    """M simulated users: login, start, run a cell, stop; started evenly over `ramp` s."""
    accounts = target.new_users(users)
    times: dict[str, list[float]] = {s: [] for s in STEPS}
    errors: dict[str, list[str]] = {s: [] for s in STEPS}
    lock = threading.Lock()
    t0 = time.monotonic() + 1.0

    def one(i: int) -> None:
        name, password = accounts[i]
        # A schedule, not a wait for a condition: user i begins at its place in the ramp.
        time.sleep(max(0.0, t0 + ramp * i / max(users, 1) - time.monotonic()))
        hub = target.client(name)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("login", lambda: hub.login(password) or _fail("login refused")),
            ("start", lambda: hub.start_server(deadline=SPAWN_DEADLINE, progress=True)),
            ("run", lambda: _check_cell(hub.run_code("print(6 * 7)", timeout=60))),
            ("stop", lambda: hub.stop_server(deadline=120)),
        ]
        for step, call in steps:
            began = time.monotonic()
            try:
                call()
            except Exception as err:  # noqa: BLE001 - an error of the simulated user
                with lock:
                    errors[step].append(f"{name}: {type(err).__name__}: {str(err)[:200]}")
                if step in ("start", "run"):
                    stop_all([hub])
                return
            with lock:
                times[step].append(time.monotonic() - began)

    with ThreadPoolExecutor(users) as pool:
        list(pool.map(one, range(users)))
    out = {
        "users": users,
        "ramp_s": ramp,
        "errors": sum(len(e) for e in errors.values()),
        "error_detail": errors,
        **{step: summary(times[step]) for step in STEPS},
    }
    print(f"  {target.name}: load {users} users, {out['errors']} errors", flush=True)
    return out


def _fail(message: str):
    raise RuntimeError(message)


def _check_cell(out: dict) -> None:
    if out.get("status") != "ok" or out.get("stdout") != "42\n":
        raise RuntimeError(f"unexpected cell result {out}")
