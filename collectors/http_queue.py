"""Queues read over HTTP: Prometheus /metrics, nginx stub_status, RabbitMQ.

The format is recognised from the body (stub_status text, a management-API
JSON document, or Prometheus exposition whose names pick the preset) unless
a preset was named. Once recognised, the preset sticks: a target that
answers an error page for a while must not be re-detected as something else.
"""

from __future__ import annotations

import json
import time

from collectors.exposition import ExpositionError, parse_exposition
from collectors.http import FetchError, HttpClient, fetch, redact
from collectors.model import OK, CollectResult, Labels, error
from collectors.nginx import StubStatusError, looks_like_stub_status, read_stub_status
from collectors.presets import (
    PRESET_NAMES,
    PROMETHEUS_PRESETS,
    Preset,
    canonical,
    detect,
    extract,
)
from collectors.rabbitmq import QueueDocumentError, looks_like_queue_document, read_queues
from collectors.readings import Converter, Reading

HTTP_PRESETS = (*PROMETHEUS_PRESETS, "nginx", "rabbitmq")


class UnknownFormat(ValueError):
    """The body is none of the formats quell reads."""


def unknown_format_message(where: str) -> str:
    return f"{where}: not a format quell reads; presets: {', '.join(PRESET_NAMES)}"


def recognise(body: str) -> str:
    """The preset that reads ``body``; UnknownFormat when none does."""
    if looks_like_stub_status(body):
        return "nginx"
    stripped = body.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(stripped)
        except ValueError:
            document = None
        if document is not None and looks_like_queue_document(document):
            return "rabbitmq"
        raise UnknownFormat("JSON that is not a RabbitMQ queue document")
    try:
        scrape = parse_exposition(body)
    except ExpositionError:
        raise UnknownFormat("neither Prometheus text, stub_status nor queue JSON") from None
    preset = detect(scrape)
    if preset is None:
        raise UnknownFormat("Prometheus text with no names a preset knows")
    return preset.name


def read(preset: str, body: str) -> list[Reading]:
    """Readings from ``body`` under ``preset``; ValueError when it does not fit."""
    if preset == "nginx":
        return read_stub_status(body)
    if preset == "rabbitmq":
        return read_queues(body)
    chosen: Preset = PROMETHEUS_PRESETS[preset]
    wanted = _WANTED.get(preset)
    if wanted is None:
        wanted = _WANTED[preset] = chosen.families()
    return extract(chosen, parse_exposition(body, wanted))


_WANTED: dict[str, frozenset[str]] = {}


class HttpQueueCollector:
    def __init__(
        self,
        url: str,
        client: HttpClient,
        *,
        preset: str | None = None,
        name: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        if preset is not None:
            known = canonical(preset)
            if known not in HTTP_PRESETS:
                raise ValueError(
                    f"unknown preset {preset!r} for an HTTP source; "
                    f"known: {', '.join(HTTP_PRESETS)}"
                )
            preset = known
        self.url = url
        self.name = name or redact(url)
        self.preset = preset
        self._client = client
        self._auth = auth
        self._converter = Converter()
        self._base: Labels = (("target", self.name),)

    async def collect(self, now: float) -> CollectResult:
        started = time.perf_counter()
        try:
            body, _ = await fetch(self._client, self.url, self._auth)
        except FetchError as problem:
            return CollectResult([], [], error(str(problem)), time.perf_counter() - started)
        preset = self.preset
        try:
            preset = preset or recognise(body)
            readings = read(preset, body)
        except UnknownFormat as problem:
            status = error(unknown_format_message(f"{self.name} answered {problem}"))
            return CollectResult([], [], status, time.perf_counter() - started)
        except (ExpositionError, StubStatusError, QueueDocumentError) as problem:
            status = error(f"{self.name}: {problem} (read as {preset})")
            return CollectResult([], [], status, time.perf_counter() - started)
        self.preset = preset
        samples = self._converter.convert(readings, now, self._base)
        return CollectResult(samples, [], OK, time.perf_counter() - started)

    async def close(self) -> None:
        """Nothing to release: the HTTP client belongs to whoever made it."""
