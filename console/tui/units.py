"""Numbers as an on-call engineer reads them: short, with their unit, "-" when unknown."""

from __future__ import annotations

import time

MISSING = "-"


def rate(value: float | None) -> str:
    """Requests per second: ``0.4/s``, ``12.3/s``, ``1.2k/s``."""
    if value is None:
        return MISSING
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k/s"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k/s"
    if abs(value) >= 100:
        return f"{value:.0f}/s"
    return f"{value:.1f}/s"


def seconds(value: float | None) -> str:
    """A duration: ``350 ms``, ``1.2 s``, ``45 s``, ``3m20s``, ``2h05m``."""
    if value is None:
        return MISSING
    if value < 0:
        return "-" + seconds(-value)
    if value == 0:
        return "0 s"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        minutes, rest = divmod(int(value + 0.5), 60)
        return f"{minutes}m{rest:02d}s"
    hours, rest = divmod(int(value + 0.5), 3600)
    return f"{hours}h{rest // 60:02d}m"


def percent(value: float | None, ratio: bool = False) -> str:
    """``ratio``: the value is 0..1 (occupancy, KV usage), else already 0..100."""
    if value is None:
        return MISSING
    return f"{value * 100 if ratio else value:.0f}%"


def count(value: float | None) -> str:
    if value is None:
        return MISSING
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}"


def size(value: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``12.0 MiB``."""
    if value is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return MISSING  # unreachable: the loop returns at TiB


def byte_rate(value: float | None) -> str:
    return MISSING if value is None else size(value) + "/s"


def clock(ts: float | None) -> str:
    """Local wall-clock time of day, to the second."""
    if ts is None:
        return MISSING
    return time.strftime("%H:%M:%S", time.localtime(ts))


def stamp(ts: float | None) -> str:
    """Local date and time, for incidents that may be days old."""
    if ts is None:
        return MISSING
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
