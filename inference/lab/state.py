"""The lab state file: where every other `quell` command finds the running lab.

It holds client keys and admin tokens, so it is written with mode 0600 in a
directory only its owner can enter, and replaced atomically so a reader never
sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "QUELL_STATE_DIR"


class LabNotRunning(Exception):
    """No lab state file, or one whose supervisor is gone."""


def state_dir() -> Path:
    """``$QUELL_STATE_DIR``, else ``$XDG_STATE_HOME/quell``, else ``~/.local/state/quell``."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "quell"


def lab_dir() -> Path:
    return state_dir() / "lab"


def state_path() -> Path:
    return lab_dir() / "lab.json"


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_state(state: dict[str, Any], path: Path | None = None) -> None:
    write_private(path or state_path(), json.dumps(state, indent=2) + "\n")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie answers kill(pid, 0) but is gone; its parent (in a container,
    # perhaps a PID 1 that reaps late) has just not collected it yet.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_state(path: Path | None = None, require_alive: bool = True) -> dict[str, Any]:
    path = path or state_path()
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabNotRunning(
            f"no lab is running (no {path}); start one with `quell lab up`"
        ) from None
    except (OSError, ValueError) as error:
        raise LabNotRunning(f"cannot read the lab state {path}: {error}") from None
    if require_alive and not pid_alive(state.get("supervisor_pid")):
        raise LabNotRunning(
            f"the lab in {path.parent} is not running (its supervisor is gone); "
            "`quell lab down` cleans up, `quell lab up` starts a new one"
        )
    return state
