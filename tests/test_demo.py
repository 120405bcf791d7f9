"""`quell demo --headless`: the whole story, as a sceptic would run it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers import quell_command


def test_headless_demo_finds_both_verdicts_fixes_them_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "QUELL_STATE_DIR": str(tmp_path / "elsewhere")}
    done = subprocess.run(
        quell_command("demo", "--headless", "--duration", "90", "--keep", str(tmp_path / "demo")),
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "verdict   producer_surge" in out and "verdict   consumer_slowdown" in out
    assert "tighten-limits: applied" in out and "scale-replicas: applied" in out
    assert "recovered tighten-limits verified" in out
    assert "recovered scale-replicas verified" in out
    assert "replicas: 4 -> 2" in out  # restore-baseline put the lab back
    assert "demo: every verdict found and fixed" in out
    # The lab it started is gone: no state file, no control socket left.
    assert not (tmp_path / "demo" / "lab" / "lab.json").exists()
    assert (tmp_path / "demo" / "lab" / "quell.db").exists()
