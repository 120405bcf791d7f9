"""What a log line says about overload, as event kinds.

Formats understood:

- JSON lines, as the gateway's access log writes them (``time``, ``key``,
  ``priority``, ``status``, ``outcome``, ``queue_wait_ms``, ``service_ms``,
  ``upstream``): the outcome names the kind (``works_queue_full`` ->
  ``queue_full``); any other 5xx is ``http_5xx``.
- nginx error log: ``YYYY/MM/DD HH:MM:SS [level] pid#tid: message``; the
  messages nginx writes when it sheds or cannot reach upstreams.
- nginx access log, combined format: 5xx answers and 429s.
- anything else: a line saying ``works queue_full`` is a ``queue_full``.

Configured rules (``{name, pattern, kind, severity}``) are matched against
every line, whatever its format. A line yields each kind at most once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collectors.model import SEVERITIES

QUEUE_FULL_TEXT = "works queue_full"

# Gateway access-log outcomes that are news; "ok" and "cached" are not.
OUTCOME_KINDS: dict[str, tuple[str, str]] = {
    "works_queue_full": ("queue_full", "warning"),
    "queue_timeout": ("queue_timeout", "warning"),
    "priority_shed": ("priority_shed", "warning"),
    "rate_limited": ("rate_limited", "info"),
    "circuit_open": ("circuit_open", "error"),
    "upstream_timeout": ("upstream_timeout", "error"),
    "upstream_unreachable": ("upstream_unreachable", "error"),
    "upstream_error": ("upstream_error", "error"),
    "upstream_rejected": ("upstream_rejected", "warning"),
}

NGINX_ERROR_KINDS: tuple[tuple[str, str], ...] = (
    ("worker_connections are not enough", "worker_connections"),
    ("limiting requests", "limit_req"),
    ("delaying request", "limit_req_delay"),
    ("limiting connections", "limit_conn"),
    ("upstream timed out", "upstream_timeout"),
    ("no live upstreams", "no_live_upstreams"),
    ("upstream prematurely closed", "upstream_closed"),
    ("(111: Connection refused) while connecting to upstream", "upstream_refused"),
    ("Too many open files", "too_many_open_files"),
)
NGINX_LEVELS = {
    "emerg": "critical",
    "alert": "critical",
    "crit": "critical",
    "error": "error",
    "warn": "warning",
    "notice": "info",
    "info": "info",
    "debug": "info",
}

_NGINX_ERROR = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\w+)\] ")
_NGINX_ACCESS = re.compile(r'^\S+ \S+ \S+ \[([^\]]+)\] "[^"]*" (\d{3}) ')

FORMATS = ("auto", "json", "nginx_error", "nginx_access", "plain")


@dataclass(frozen=True, slots=True)
class LogRule:
    name: str
    pattern: re.Pattern[str]
    kind: str
    severity: str = "warning"

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> LogRule:
        """A rule from ``{name, pattern, kind?, severity?}``; ValueError when malformed."""
        name = entry.get("name")
        pattern = entry.get("pattern")
        if not isinstance(name, str) or not name:
            raise ValueError("a log rule needs a name")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"log rule {name!r} needs a pattern")
        try:
            compiled = re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as problem:
            # OverflowError: a repeat count such as a{4294967296};
            # RecursionError: groups nested thousands deep.
            raise ValueError(f"log rule {name!r}: bad pattern: {problem}") from None
        kind = entry.get("kind", name)
        severity = entry.get("severity", "warning")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"log rule {name!r}: kind must be a word")
        if severity not in SEVERITIES:
            raise ValueError(f"log rule {name!r}: severity must be one of {', '.join(SEVERITIES)}")
        return cls(name, compiled, kind, severity)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    severity: str
    ts: float | None = None


def _json_line(line: str) -> list[Finding] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        # RecursionError: "[[[[..." nested past the interpreter's limit.
        return None
    if not isinstance(record, dict):
        return None
    ts = _iso_time(record.get("time"))
    findings: list[Finding] = []
    outcome = record.get("outcome")
    if isinstance(outcome, str) and outcome in OUTCOME_KINDS:
        kind, severity = OUTCOME_KINDS[outcome]
        findings.append(Finding(kind, severity, ts))
    status = record.get("status")
    if not findings and isinstance(status, int) and status >= 500:
        findings.append(Finding("http_5xx", "error", ts))
    if QUEUE_FULL_TEXT in line and not any(f.kind == "queue_full" for f in findings):
        findings.append(Finding("queue_full", "warning", ts))
    return findings


def _iso_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _nginx_error(line: str) -> list[Finding] | None:
    match = _NGINX_ERROR.match(line)
    if match is None:
        return None
    severity = NGINX_LEVELS.get(match.group(2), "info")
    try:
        # nginx writes local time without a zone.
        ts: float | None = datetime.strptime(match.group(1), "%Y/%m/%d %H:%M:%S").timestamp()
    except ValueError:
        ts = None
    findings = [Finding(kind, severity, ts) for text, kind in NGINX_ERROR_KINDS if text in line]
    if not findings and severity == "critical":
        findings.append(Finding("nginx_alert", severity, ts))
    return findings


def _nginx_access(line: str) -> list[Finding] | None:
    match = _NGINX_ACCESS.match(line)
    if match is None:
        return None
    try:
        ts: float | None = datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()
    except ValueError:
        ts = None
    status = int(match.group(2))
    if status >= 500:
        return [Finding("http_5xx", "error", ts)]
    if status == 429:
        return [Finding("http_429", "warning", ts)]
    return []


def classify(line: str, fmt: str = "auto", rules: Sequence[LogRule] = ()) -> list[Finding]:
    findings: list[Finding] | None = None
    if fmt in ("auto", "json") and line.startswith("{"):
        findings = _json_line(line)
    if findings is None and fmt in ("auto", "nginx_error"):
        findings = _nginx_error(line)
    if findings is None and fmt in ("auto", "nginx_access"):
        findings = _nginx_access(line)
    if findings is None:
        findings = [Finding("queue_full", "warning")] if QUEUE_FULL_TEXT in line else []
    kinds = {f.kind for f in findings}
    for rule in rules:
        if rule.kind not in kinds and rule.pattern.search(line):
            findings.append(Finding(rule.kind, rule.severity))
            kinds.add(rule.kind)
    return findings
