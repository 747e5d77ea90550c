"""The container metrics file (scirepo/metrics.py) from Docker's stats answers."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

from scirepo import metrics


def _stats(cpu_ns: int, usage: int, inactive: int, limit: int) -> dict:
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
        "memory_stats": {
            "usage": usage,
            "limit": limit,
            "stats": {"total_inactive_file": inactive},
        },
    }


def test_render_counts_cpu_seconds_and_memory_without_page_cache():
    text = metrics.render(
        [
            {
                "name": "jupyter-alice",
                "stats": _stats(2_500_000_000, 300, 100, 4096),
                "started": "2026-11-21T22:00:00.123456789Z",
            },
            {"name": "scirepo-hub", "stats": _stats(1_000_000_000, 50, 0, 8192), "started": ""},
        ],
        now=1000.0,
    )
    lines = text.splitlines()
    assert 'scirepo_container_cpu_seconds_total{name="jupyter-alice"} 2.5' in lines
    assert 'scirepo_container_memory_bytes{name="jupyter-alice"} 200' in lines
    assert 'scirepo_container_memory_limit_bytes{name="scirepo-hub"} 8192' in lines
    assert 'scirepo_container_start_time_seconds{name="jupyter-alice"} 1795298400.123' in lines
    assert not any(
        x.startswith('scirepo_container_start_time_seconds{name="scirepo-hub"') for x in lines
    )
    assert "scirepo_containers_running 2" in lines
    assert "scirepo_container_metrics_timestamp_seconds 1000.000" in lines
    assert "# TYPE scirepo_container_cpu_seconds_total counter" in lines
    assert text.endswith("\n")


def test_memory_in_use_cgroup_v2_and_missing_stats():
    assert metrics.memory_in_use({"usage": 500, "stats": {"inactive_file": 200}}) == 300
    assert metrics.memory_in_use({"usage": 500}) == 500
    assert metrics.memory_in_use({"usage": 100, "stats": {"total_inactive_file": 400}}) == 100


def test_label_values_are_escaped():
    text = metrics.render([{"name": 'a"b\\c', "stats": {}, "started": ""}], now=0)
    assert "scirepo_containers_running 1" in text
    assert metrics._label('a"b\\c') == 'a\\"b\\\\c'


def test_write_atomically_leaves_only_the_file(tmp_path):
    out = tmp_path / "x.prom"
    metrics.write_atomically(out, "a 1\n")
    metrics.write_atomically(out, "a 2\n")
    assert out.read_text() == "a 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.prom"]
    assert out.stat().st_mode & 0o777 == 0o644


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a Unix socket that answers like the Docker engine while
    containers go: of three listed, one stops (its stats answer is empty) and one is
    removed (404)."""

    daemon_threads = True
    answers = {
        "/containers/json": [
            {"Id": "a1", "Names": ["/jupyter-alice"]},
            {"Id": "b2", "Names": ["/jupyter-bob"]},
            {"Id": "c3", "Names": ["/jupyter-carol"]},
        ],
        "/containers/a1/stats?stream=false&one-shot=true": _stats(10**9, 300, 100, 4096),
        "/containers/a1/json": {"State": {"StartedAt": "2026-11-21T22:00:00Z"}},
        "/containers/b2/stats?stream=false&one-shot=true": "",  # stopping: empty answer
        "/containers/b2/json": {"State": {"StartedAt": ""}},
        # c3 was removed since the listing: 404 for both
    }


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server interface
        if self.path not in self.server.answers:
            body, status = b'{"message": "No such container"}', 404
        else:
            answer = self.server.answers[self.path]
            body, status = (json.dumps(answer).encode() if answer != "" else b""), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "engine"

    def log_message(self, *args):
        pass


def test_containers_stopping_during_a_run_are_left_out_not_a_failure(tmp_path):
    sock = str(tmp_path / "docker.sock")
    server = _Engine(sock, _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "containers.prom"
        assert metrics.main(["--docker-socket", sock, "--output", str(out)]) == 0
        got = metrics.collect(sock)
    finally:
        server.shutdown()
        server.server_close()
    assert [c["name"] for c in got] == ["jupyter-alice"]
    text = out.read_text()
    assert 'scirepo_container_memory_bytes{name="jupyter-alice"} 200' in text
    assert "jupyter-bob" not in text and "scirepo_containers_running 1" in text
