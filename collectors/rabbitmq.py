"""A RabbitMQ queue from the management API, in quell's words.

``GET /api/queues/{vhost}/{name}`` answers one queue as JSON (``/api/queues``
or ``/api/queues/{vhost}`` a list of them). Fields used, as the management
plugin documents them:

- ``messages_ready`` -> ``depth``: waiting for a consumer.
- ``messages_unacknowledged`` -> ``running``: delivered, not yet acked.
- ``consumers`` -> ``workers``.
- ``arguments.x-max-length`` (or the policy's ``max-length``) -> ``capacity``.
- ``message_stats.publish`` / ``publish_details.rate`` -> ``offered_total`` /
  ``offered_rate``; ``ack`` (or ``deliver_get`` when consumers auto-ack) ->
  ``completed_total`` / ``completed_rate``. RabbitMQ computes these rates
  itself over its own sample window, so quell reports them as given.
- ``consumer_utilisation`` (``consumer_capacity`` in RabbitMQ >= 3.12).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from collectors.model import Labels
from collectors.readings import Reading


class QueueDocumentError(ValueError):
    """Not a management-API queue document."""


def looks_like_queue_document(document: Any) -> bool:
    items = document if isinstance(document, list) else [document]
    return bool(items) and all(
        isinstance(q, dict) and "name" in q and ("messages_ready" in q or "vhost" in q)
        for q in items
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _queue(q: Mapping[str, Any]) -> list[Reading]:
    labels: Labels = (("queue", str(q.get("name", ""))),)
    readings: list[Reading] = []

    def gauge(series: str, value: Any) -> None:
        number = _number(value)
        if number is not None:
            readings.append(Reading(series, labels, "gauge", number))

    gauge("depth", q.get("messages_ready"))
    gauge("running", q.get("messages_unacknowledged"))
    gauge("workers", q.get("consumers"))
    arguments = q.get("arguments") or {}
    policy = q.get("effective_policy_definition") or {}
    capacity = arguments.get("x-max-length") if isinstance(arguments, dict) else None
    if capacity is None and isinstance(policy, dict):
        capacity = policy.get("max-length")
    gauge("capacity", capacity)
    utilisation = q.get("consumer_utilisation", q.get("consumer_capacity"))
    gauge("consumer_utilisation", utilisation)

    stats = q.get("message_stats") or {}
    if not isinstance(stats, dict):
        return readings

    def counted(series: str, field: str) -> bool:
        total = _number(stats.get(field))
        if total is None:
            return False
        readings.append(Reading(series, labels, "total", total))
        details = stats.get(f"{field}_details")
        rate = _number(details.get("rate")) if isinstance(details, dict) else None
        if rate is not None:
            readings.append(Reading(series.removesuffix("_total") + "_rate", labels, "gauge", rate))
        return True

    counted("offered_total", "publish")
    # With automatic acknowledgement nothing is ever acked: delivery is completion.
    if not counted("completed_total", "ack"):
        counted("completed_total", "deliver_get")
    return readings


def read_queues(text: str) -> list[Reading]:
    try:
        document = json.loads(text)
    except ValueError:
        raise QueueDocumentError("not JSON") from None
    if not looks_like_queue_document(document):
        raise QueueDocumentError("not a RabbitMQ management-API queue document")
    items = document if isinstance(document, list) else [document]
    readings: list[Reading] = []
    for q in items:
        readings.extend(_queue(q))
    return readings
