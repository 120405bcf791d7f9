"""The console's own settings: theme, refresh, chart span and key bindings (TOML).

    theme = "light"           # or "dark" (default)
    refresh_s = 1.0           # how often the screen follows the data
    chart_minutes = 5         # span of the offered-vs-served chart

    [keys]                    # command id = key(s); `?` in the console lists the ids
    "view.logs" = "l"
    "logs.filter" = "ctrl+f"

Read from ``--settings FILE``, else ``$XDG_CONFIG_HOME/quell/console.toml``
(``~/.config/quell/console.toml``) when it exists. Like the daemon's config,
an unknown key or a bad value is refused with one line that names it.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.tui.keys import check_keymap

THEMES = {"dark": "textual-dark", "light": "textual-light"}


class SettingsError(ValueError):
    """The settings cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class Settings:
    theme: str = "dark"
    refresh_s: float = 1.0
    chart_minutes: float = 5.0
    keys: dict[str, str] = field(default_factory=dict)
    origin: str = "defaults"


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    root = Path(base) if base else Path.home() / ".config"
    return root / "quell" / "console.toml"


def load_settings(path: Path | None) -> Settings:
    """``path`` must exist when given; without it the default file is optional."""
    if path is None:
        path = default_path()
        if not path.exists():
            return Settings()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as problem:
        raise SettingsError(f"cannot read {path}: {problem.strerror or problem}") from None
    except tomllib.TOMLDecodeError as problem:
        raise SettingsError(f"{path}: not valid TOML: {problem}") from None
    return parse_settings(data, str(path))


def parse_settings(data: dict[str, Any], origin: str) -> Settings:
    known = ("theme", "refresh_s", "chart_minutes", "keys")
    for key in data:
        if key not in known:
            raise SettingsError(f"{origin}: {key}: unknown key; known keys: {', '.join(known)}")
    theme = data.get("theme", "dark")
    if theme not in THEMES:
        raise SettingsError(f"{origin}: theme: must be one of {', '.join(THEMES)}, got {theme!r}")
    refresh = _number(data, "refresh_s", 1.0, 0.2, 60.0, origin)
    chart = _number(data, "chart_minutes", 5.0, 1.0, 60.0, origin)
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise SettingsError(f"{origin}: keys: must be a table of command id = key")
    problems = check_keymap(keys)
    if problems:
        raise SettingsError(f"{origin}: {problems[0]}")
    return Settings(theme, refresh, chart, {k: str(v) for k, v in keys.items()}, origin)


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float,
            origin: str) -> float:  # fmt: skip
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{origin}: {key}: must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"{origin}: {key}: must be from {low:g} to {high:g}, got {value}")
    return float(value)
