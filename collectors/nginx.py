"""nginx's stub_status page in quell's words.

The page is four lines, each ending with a space::

    Active connections: 291
    server accepts handled requests
     16630948 16630948 31070465
    Reading: 6 Writing: 179 Waiting: 106

nginx has no request queue of its own to report; what it does say is how
many requests arrive (``requests`` -> ``offered_total``), how many
connections are busy with a request (reading its header or writing its
answer -> ``running``) and how many it accepted but could not handle
(``accepts - handled``, which grows when ``worker_connections`` runs out).
"""

from __future__ import annotations

import re

from collectors.readings import Reading

_ACTIVE = re.compile(r"Active connections:\s*(\d+)")
_COUNTS = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)
_STATES = re.compile(r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)")


class StubStatusError(ValueError):
    """Not an nginx stub_status page."""


def looks_like_stub_status(text: str) -> bool:
    return text.lstrip().startswith("Active connections:")


def read_stub_status(text: str) -> list[Reading]:
    active = _ACTIVE.search(text)
    counts = _COUNTS.search(text)
    states = _STATES.search(text)
    if active is None or counts is None or states is None:
        raise StubStatusError("not an nginx stub_status page")
    accepts, handled, requests = (float(v) for v in counts.groups())
    reading, writing, waiting = (float(v) for v in states.groups())
    return [
        Reading("connections_active", (), "gauge", float(active.group(1))),
        Reading("connections_idle", (), "gauge", waiting),
        Reading("running", (), "gauge", reading + writing),
        Reading("offered_total", (), "counter", requests),
        Reading("connections_accepted_total", (), "counter", accepts),
        Reading("connections_dropped_total", (), "counter", max(0.0, accepts - handled)),
    ]
