"""The daemon's own HTTP endpoint: /metrics for Prometheus, /status for people and scripts.

/openapi.json describes the endpoint (collectors/openapi.py); every error,
a POST route's included, is ``{"error": {"message", "type", "code"}}``.

/metrics carries two things:

- every series the daemon collected on its last tick, re-exported as a gauge
  ``quell_<series>`` with the sample's labels plus ``target`` (the source's
  name), so a Prometheus server scraping many hosts sees them in quell's
  words. Counters are re-exported as their current totals, rates as rates.
- the daemon's own health (``quell_daemon_*``): tick time, per-target up,
  errors and scrape time, samples written, samples buffered while the store
  cannot be written, store errors.

Label cardinality is bounded per target: past MAX_SERIES_PER_TARGET label
sets, the rest of a target's samples are left out of /metrics (never out of
the store) and counted in ``quell_daemon_export_dropped_series``.

The server is the standard library's WSGI server on a thread of its own, so
a slow scraper never delays a tick; a tick hands it a new snapshot by
swapping one reference.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from collectors.model import Sample
from collectors.openapi import daemon_document
from collectors.signals import SIGNALS

MAX_SERIES_PER_TARGET = 2000
PREFIX = "quell_"
OWN_PREFIX = "quell_daemon_"
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# A POST route added by whoever runs the daemon (the Alertmanager receiver):
# (body, lower-cased headers) -> (status, JSON answer). It runs on the HTTP
# thread, so it must hand real work to the daemon's loop and return.
PostRoute = Callable[[bytes, Mapping[str, str]], tuple[int, Mapping[str, Any]]]
MAX_POST_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 10.0
GET_PATHS = ("/metrics", "/status", "/openapi.json")
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 503: "Service Unavailable"}  # fmt: skip


def metric_name(series: str) -> str:
    return PREFIX + _INVALID.sub("_", series)


class SeriesExport(Collector):
    """The last tick's samples, per target, as gauges."""

    def __init__(self) -> None:
        self._by_target: dict[str, list[Sample]] = {}

    def update(self, target: str, samples: Sequence[Sample]) -> None:
        kept = list(samples[:MAX_SERIES_PER_TARGET])
        table = dict(self._by_target)
        table[target] = kept
        # One reference swap: the server thread sees the old table or the new.
        self._by_target = table

    def forget(self, target: str) -> None:
        table = dict(self._by_target)
        table.pop(target, None)
        self._by_target = table

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for target, samples in sorted(self._by_target.items()):
            for sample in samples:
                name = metric_name(sample.series)
                if name.startswith(OWN_PREFIX):
                    continue  # would shadow the daemon's own health metrics
                family = families.get(name)
                if family is None:
                    signal = SIGNALS.get(sample.series)
                    about = f"{signal.meaning} ({signal.unit})" if signal else sample.series
                    family = families[name] = Metric(name, about, "gauge")
                labels = dict(sample.labels)
                labels.setdefault("target", target)
                family.add_sample(name, labels, sample.value)
        yield from families.values()


class Exporter:
    """The daemon's metrics, in a registry of their own (not the process-wide one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.tick_seconds = Histogram(
            "quell_daemon_tick_seconds",
            "time one tick took: collecting every target, writing the store, hooks",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.target_up = Gauge(
            "quell_daemon_target_up", "1 when the target's last collection succeeded", ["target"],
            registry=r,
        )  # fmt: skip
        self.scrape_errors = Counter(
            "quell_daemon_scrape_errors", "failed collections, by target", ["target"], registry=r
        )
        self.scrape_seconds = Gauge(
            "quell_daemon_scrape_seconds", "time the target's last collection took", ["target"],
            registry=r,
        )  # fmt: skip
        self.samples_written = Counter(
            "quell_daemon_samples_written", "samples written to the store", registry=r
        )
        self.samples_dropped = Counter(
            "quell_daemon_samples_dropped",
            "samples lost because the store could not be written for too long",
            registry=r,
        )
        self.buffered = Gauge(
            "quell_daemon_buffered_samples",
            "samples held in memory because the store cannot be written",
            registry=r,
        )
        self.store_errors = Counter(
            "quell_daemon_store_errors", "failed writes and jobs on the store", registry=r
        )
        self.hook_errors = Counter(
            "quell_daemon_tick_hook_errors", "per-tick hooks (diagnosis) that failed", registry=r
        )
        self.series = SeriesExport()
        r.register(self.series)
        self.export_dropped = Gauge(
            "quell_daemon_export_dropped_series",
            f"samples left out of /metrics past {MAX_SERIES_PER_TARGET} per target",
            ["target"],
            registry=r,
        )

    def forget_target(self, target: str) -> None:
        for metric in (
            self.target_up,
            self.scrape_errors,
            self.scrape_seconds,
            self.export_dropped,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(target)
        self.series.forget(target)

    def record_target(
        self, target: str, ok: bool, latency_s: float, samples: Sequence[Sample]
    ) -> None:
        self.target_up.labels(target).set(1 if ok else 0)
        self.scrape_seconds.labels(target).set(latency_s)
        if not ok:
            self.scrape_errors.labels(target).inc()
        else:
            # Create the child so a healthy target shows 0 errors, not nothing.
            self.scrape_errors.labels(target)
        self.series.update(target, samples)
        self.export_dropped.labels(target).set(max(0, len(samples) - MAX_SERIES_PER_TARGET))


# -- the HTTP server ----------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # A client that opens a connection and trickles (or never sends) its
    # request would otherwise hold a server thread for good.
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not news; the daemon's log stays readable."""


_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "unauthorized"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    503: ("server_error", "unavailable"),
}


def error_answer(status: int, message: str) -> dict[str, Any]:
    """The OpenAI error shape the bundled servers use, so one client check reads them all."""
    kind, code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _shaped(status: int, answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """A route's ``{"error": "text"}`` in the shared error shape."""
    error = answer.get("error")
    if status >= 400 and isinstance(error, str):
        return error_answer(status, error)
    return answer


def _post(route: PostRoute, environ: dict[str, Any]) -> tuple[int, Mapping[str, Any]]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0:
        return 400, {"error": "bad Content-Length"}
    if length > MAX_POST_BYTES:
        return 413, {"error": f"body over {MAX_POST_BYTES} bytes"}
    try:
        body = environ["wsgi.input"].read(length) if length else b""
    except OSError:
        return 408, {"error": f"the body did not arrive within {REQUEST_TIMEOUT_S:g} s"}
    headers = {
        k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")
    }
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = str(environ["CONTENT_TYPE"])
    return route(body, headers)


def _app(
    registry: CollectorRegistry,
    status: Callable[[], Mapping[str, Any]],
    routes: Mapping[str, PostRoute] | None = None,
) -> WsgiApp:
    metrics = make_wsgi_app(registry)
    routes = routes if routes is not None else {}

    def answer(
        start_response: StartResponse,
        code: int,
        payload: Mapping[str, Any],
        headers: Sequence[tuple[str, str]] = (),
    ) -> list[bytes]:
        start_response(
            f"{code} {_REASONS.get(code, 'Error')}",
            [("Content-Type", "application/json"), *headers],
        )
        return [json.dumps(payload, indent=2).encode() + b"\n"]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        route = routes.get(path)
        if route is not None:
            if method != "POST":
                return answer(start_response, 405, error_answer(405, f"use POST on {path}"),
                              [("Allow", "POST")])  # fmt: skip
            code, reply = _post(route, environ)
            return answer(start_response, code, _shaped(code, reply))
        if path not in GET_PATHS:
            message = f"no route for {path}; the daemon serves {', '.join(GET_PATHS)}"
            if routes:
                message += f" and POST {', '.join(sorted(routes))}"
            return answer(start_response, 404, error_answer(404, message))
        if method not in ("GET", "HEAD"):
            return answer(start_response, 405, error_answer(405, f"use GET on {path}"),
                          [("Allow", "GET, HEAD")])  # fmt: skip
        if path == "/status":
            return answer(start_response, 200, status())
        if path == "/openapi.json":
            return answer(start_response, 200, daemon_document(routes))
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        status: Callable[[], Mapping[str, Any]],
        routes: Mapping[str, PostRoute] | None = None,
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(
            host, port, _app(registry, status, routes), server_class=server_class,
            handler_class=_QuietHandler,
        )  # fmt: skip
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="quell-metrics",
            daemon=True,
        )

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
