"""`quell probe`: what a person sees, and its exit codes."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from console.cli import main
from tests.test_collectors_presets import RABBITMQ_QUEUE

SIGNAL_WORDS = {
    "depth", "capacity", "running", "workers", "offered_total", "offered_rate",
    "completed_total", "completed_rate", "rejected_total", "rejected_rate",
    "queue_wait_seconds", "queue_wait_p95_seconds", "service_seconds", "service_p95_seconds",
    "latency_seconds", "latency_p95_seconds", "kv_usage", "failed_total", "failed_rate",
    "preemptions_total", "preemptions_rate", "swapped", "connections_active", "connections_idle",
    "connections_accepted_total", "connections_accepted_rate", "connections_dropped_total",
    "connections_dropped_rate", "consumer_utilisation", "gpu_utilization_percent",
    "gpu_memory_used_bytes",
}  # fmt: skip


@contextmanager
def serving(
    body: str, content_type: str = "text/plain", credentials: tuple[str, str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on a free loopback port answering ``body`` to every GET."""
    paths: list[str] = []
    expected = None
    if credentials is not None:
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            if expected is not None and self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def probe(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["probe", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_preset_and_signals_in_quell_words(
    capsys: pytest.CaptureFixture[str], fixtures: Path
) -> None:
    with serving((fixtures / "tgi.prom").read_text()) as (url, paths):
        code, out, err = probe(capsys, f"{url}/metrics", "--json", "--interval", "0.1")
    assert code == 0, err
    document = json.loads(out)
    assert set(document) == {"preset", "signals", "breakdown"}
    assert document["preset"] == "tgi"
    found = document["signals"]
    assert set(found) <= SIGNAL_WORDS
    assert (found["depth"], found["running"], found["offered_total"]) == (17, 32, 5120)
    assert found["offered_rate"] == 0  # the fixture does not move
    assert "capacity" not in found  # TGI does not say: absent, not zero
    assert {p["labels"]["reason"]: p["value"] for p in document["breakdown"]["rejected_total"]} == {
        "overloaded": 37,
        "validation": 3,
    }
    assert paths == ["/metrics", "/metrics"]


def test_interval_zero_reads_once_and_reports_totals_only(
    capsys: pytest.CaptureFixture[str], fixtures: Path
) -> None:
    with serving((fixtures / "triton.prom").read_text()) as (url, paths):
        code, out, _ = probe(capsys, url, "--json", "--interval", "0")
    assert code == 0
    found = json.loads(out)["signals"]
    assert not any(name.endswith("_rate") for name in found)
    assert found["completed_total"] == 88213
    assert paths == ["/metrics"]  # no path given: /metrics


def test_a_named_preset_is_used_as_given(
    capsys: pytest.CaptureFixture[str], fixtures: Path
) -> None:
    with serving((fixtures / "nginx_stub_status.txt").read_text()) as (url, _):
        code, out, _ = probe(capsys, f"{url}/status", "--preset", "nginx", "--interval", "0")
    assert code == 0
    assert out.splitlines()[0] == "preset nginx: nginx stub_status page"
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows["offered_total"] == "31070465"
    assert rows["running"] == "185"


def test_unknown_format_lists_the_presets_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with serving("<html><body>It works!</body></html>", "text/html") as (url, _):
        code, out, err = probe(capsys, url)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "not a format quell reads" in err
    for preset in ("quell-gateway", "vllm", "tgi", "triton", "ray-serve", "litellm", "nginx"):
        assert preset in err


def test_a_preset_that_does_not_fit_exits_2(
    capsys: pytest.CaptureFixture[str], fixtures: Path
) -> None:
    with serving((fixtures / "tgi.prom").read_text()) as (url, _):
        code, _, err = probe(capsys, url, "--preset", "nginx")
    assert code == 2
    assert "not an nginx stub_status page" in err


def test_unreachable_url_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code, out, err = probe(capsys, f"http://127.0.0.1:{port}/metrics", "--timeout", "2")
    assert code == 2
    assert out == ""
    assert err.startswith(f"quell: cannot connect to http://127.0.0.1:{port}/metrics: ")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/metrics", "unsupported URL scheme 'ftp'"),
        ("localhost:8000/metrics", "unsupported URL scheme 'localhost'"),
        ("metrics", "unsupported URL scheme none"),
        ("http:///metrics", "no host in http:///metrics"),
        ("http://127.0.0.1:99999/metrics", "bad port"),
        ("redis://127.0.0.1:6379/zero?queue=q", "must be a database number"),
        ("redis://127.0.0.1:6379/0?queue=q&kind=sidekiq", "kind must be celery or rq"),
        ("rabbitmq+http://h:15672/a/b/c", "expected /vhost/queue"),
    ],
)
def test_bad_urls_exit_2_with_a_reason(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    code, _, err = probe(capsys, url)
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1


def test_unknown_preset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = probe(capsys, "http://127.0.0.1:1/metrics", "--preset", "kafka")
    assert code == 2
    assert "unknown preset 'kafka'; presets: quell-gateway, vllm," in err


def test_passwords_are_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    for url in (
        f"redis://:hunter2@127.0.0.1:{port}/0?queue=celery&kind=celery",
        f"redis://hunter2@127.0.0.1:{port}/0?queue=celery&kind=celery",
        f"rabbitmq+http://ops:hunter2@127.0.0.1:{port}/%2F/celery",
        f"http://ops:hunter2@127.0.0.1:{port}/metrics",
    ):
        code, out, err = probe(capsys, url, "--timeout", "1")
        assert code == 2
        assert "hunter2" not in out + err
        assert err.startswith("quell: ")


def test_rabbitmq_queue_through_the_management_api(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(RABBITMQ_QUEUE, "application/json", credentials=("ops", "s3cret")) as (url, paths):
        port = url.rsplit(":", 1)[1]
        code, out, err = probe(
            capsys, f"rabbitmq+http://ops:s3cret@127.0.0.1:{port}/%2F/celery", "--json",
            "--interval", "0",
        )  # fmt: skip
    assert code == 0, err
    assert paths == ["/api/queues/%2F/celery"]
    document = json.loads(out)
    assert document["preset"] == "rabbitmq"
    found = document["signals"]
    assert (found["depth"], found["running"], found["workers"], found["capacity"]) == (
        9376, 26, 6, 10000,
    )  # fmt: skip
    assert found["offered_rate"] == pytest.approx(71.2)
    assert "s3cret" not in out


def test_rabbitmq_wrong_password_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(RABBITMQ_QUEUE, "application/json", credentials=("ops", "right")) as (url, _):
        port = url.rsplit(":", 1)[1]
        code, _, err = probe(capsys, f"rabbitmq+http://ops:wrong@127.0.0.1:{port}/%2F/celery")
    assert code == 2
    assert err == (
        f"quell: HTTP 401 from http://127.0.0.1:{port}/api/queues/%2F/celery "
        "(check the user and password)\n"
    )
