"""Running `quell lab` from tests with a private state directory."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.servers import quell_command


def quell(state_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir)}
    return subprocess.run(
        quell_command(*args), capture_output=True, text=True, timeout=timeout, env=env
    )


def lab_state(state_dir: Path) -> dict[str, Any]:
    result = quell(state_dir, "lab", "status", "--json")
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def lab_pids(state: dict[str, Any]) -> list[int]:
    return [state["supervisor_pid"], state["gateway"]["pid"], *(e["pid"] for e in state["engines"])]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]
