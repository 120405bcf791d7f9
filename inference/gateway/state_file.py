"""Admin changes that survive a restart.

A change made during an incident (workers raised, a replica drained, a
class shed) must not silently revert when the gateway restarts. After every
change the whole run-time state is written to a temporary file beside the
target, flushed to disk and renamed over it, so a crash mid-write leaves
either the old state or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from inference.gateway.config import ConfigError

FORMAT = 1


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps({"format": FORMAT, **state}, indent=2, sort_keys=True).encode()
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"cannot read state file {path}: {error.strerror}") from None
    try:
        state = json.loads(raw)
    except ValueError as error:
        raise ConfigError(
            f"state file {path} is not valid JSON ({error}); fix or remove it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(
            f"state file {path} is not a format-{FORMAT} gateway state; fix or remove it"
        )
    state.pop("format")
    return state
