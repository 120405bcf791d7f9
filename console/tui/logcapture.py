"""Log records of the in-process collector, shown on the Logs screen instead of stderr.

While the console owns the terminal, a log line written to stderr would tear
through the screen; Python's last-resort handler prints warnings there when
no handler is configured. So, for as long as the console runs, every record
is kept here (bounded) and the Logs screen shows them as events of source
``console``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from collectors.model import Event

SEVERITY = {
    logging.DEBUG: "info",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class CapturedLogs(logging.Handler):
    def __init__(self, limit: int = 1000) -> None:
        super().__init__(logging.INFO)
        # deque appends and pops are atomic: records from the collector's
        # threads need no lock.
        self._records: deque[logging.LogRecord] = deque(maxlen=limit)

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def drain(self) -> list[Event]:
        events = []
        while self._records:
            record = self._records.popleft()
            try:
                text = record.getMessage()
            except Exception:  # a bad format string must not lose the console
                text = str(record.msg)
            severity = SEVERITY.get(record.levelno, "warning")
            events.append(Event(record.created, "console", record.name, text, severity))
        return events


@contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    root = logging.getLogger()
    quell = logging.getLogger("quell")
    saved = (root.handlers[:], root.level, quell.level)
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    quell.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.handlers, _, _ = saved
        root.setLevel(saved[1])
        quell.setLevel(saved[2])
