"""Per-container CPU and memory for Prometheus, through node-exporter's textfile collector.

A systemd timer on the host (ansible/roles/metrics) runs

    python3 -m scirepo.metrics --output /var/lib/prometheus/node-exporter/scirepo_containers.prom

every `metrics.scrape_interval`. It asks the Docker engine (its API on the unix socket,
one-shot stats: no second sample to wait for) about every running container and writes

    scirepo_container_cpu_seconds_total{name}      CPU time used (counter)
    scirepo_container_memory_bytes{name}           memory in use without the page cache,
                                                   as `docker stats` shows it
    scirepo_container_memory_limit_bytes{name}     the container's memory limit
    scirepo_container_start_time_seconds{name}     when it started (Unix time)
    scirepo_containers_running                     how many run
    scirepo_container_metrics_timestamp_seconds    when this file was written

atomically (a temporary file renamed over the old one), so node-exporter never reads half a
file. Only the standard library: the host's python3 runs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

DOCKER_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _get(path: str, sock: str) -> object:
    conn = _UnixConnection(sock)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        body = res.read()
        if res.status != 200:
            raise RuntimeError(f"GET {path}: {res.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def collect(sock: str = DOCKER_SOCKET) -> list[dict]:
    """Name, stats and start time of every running container."""
    out = []
    for summary in _get("/containers/json", sock):
        cid = summary["Id"]
        try:
            stats = _get(f"/containers/{cid}/stats?stream=false&one-shot=true", sock)
            info = _get(f"/containers/{cid}/json", sock)
        except (RuntimeError, ValueError):
            # It stopped in between: gone (404), or its stats answer came back empty
            # (the engine ends it when the container exits), which is no JSON.
            continue
        out.append(
            {
                "name": summary["Names"][0].lstrip("/"),
                "stats": stats,
                "started": info.get("State", {}).get("StartedAt", ""),
            }
        )
    return out


def memory_in_use(mem: dict) -> int:
    """Usage without the inactive page cache, as `docker stats` computes it (cgroup v1 and v2)."""
    usage = mem.get("usage", 0)
    stats = mem.get("stats", {})
    for key in ("total_inactive_file", "inactive_file"):
        if key in stats and stats[key] < usage:
            return usage - stats[key]
    return usage


def _started(text: str) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    # Docker's RFC 3339 time has nanoseconds; fromisoformat takes at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(containers: list[dict], now: float) -> str:
    """The Prometheus text exposition of `collect()`'s result."""
    families = {
        "scirepo_container_cpu_seconds_total": ("counter", "CPU time the container used."),
        "scirepo_container_memory_bytes": (
            "gauge",
            "Memory the container uses, without inactive page cache (as docker stats).",
        ),
        "scirepo_container_memory_limit_bytes": ("gauge", "Memory limit of the container."),
        "scirepo_container_start_time_seconds": ("gauge", "When the container started."),
    }
    samples: dict[str, list[str]] = {name: [] for name in families}
    for c in sorted(containers, key=lambda c: c["name"]):
        labels = f'{{name="{_label(c["name"])}"}}'
        stats = c["stats"]
        cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        if cpu is not None:
            samples["scirepo_container_cpu_seconds_total"].append(f"{labels} {cpu / 1e9:.9g}")
        mem = stats.get("memory_stats", {})
        if "usage" in mem:
            samples["scirepo_container_memory_bytes"].append(f"{labels} {memory_in_use(mem)}")
        if mem.get("limit"):
            samples["scirepo_container_memory_limit_bytes"].append(f"{labels} {mem['limit']}")
        started = _started(c.get("started", ""))
        if started is not None:
            samples["scirepo_container_start_time_seconds"].append(f"{labels} {started:.3f}")
    lines = []
    for name, (kind, help_text) in families.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{s}" for s in samples[name]]
    lines += [
        "# HELP scirepo_containers_running Containers the Docker engine runs.",
        "# TYPE scirepo_containers_running gauge",
        f"scirepo_containers_running {len(containers)}",
        "# HELP scirepo_container_metrics_timestamp_seconds When these metrics were collected.",
        "# TYPE scirepo_container_metrics_timestamp_seconds gauge",
        f"scirepo_container_metrics_timestamp_seconds {now:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m scirepo.metrics", description=__doc__)
    parser.add_argument("--output", type=Path, help="the .prom file (default: stdout)")
    parser.add_argument("--docker-socket", default=DOCKER_SOCKET)
    args = parser.parse_args(argv)
    try:
        text = render(collect(args.docker_socket), time.time())
    except (OSError, RuntimeError, ValueError) as err:
        print(f"scirepo.metrics: {err}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
