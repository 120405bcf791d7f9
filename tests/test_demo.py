"""`quell demo --headless`: the whole story, as a sceptic would run it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import require_program
from tests.lab_helpers import lab_pids, wait_gone
from tests.servers import quell_command
from tests.test_console_terminal import Tmux, wait_for_screen


def test_the_demo_without_a_terminal_finds_both_verdicts_fixes_them_and_cleans_up(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "QUELL_STATE_DIR": str(tmp_path / "elsewhere")}
    done = subprocess.run(
        # As the README runs it: `quell demo`, here without a terminal, so headless.
        quell_command("demo", "--duration", "80", "--keep", str(tmp_path / "demo")),
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "no terminal here; running --headless" in done.stderr
    assert "verdict   producer_surge" in out and "verdict   consumer_slowdown" in out
    assert "tighten-limits: applied" in out and "scale-replicas: applied" in out
    assert "recovered tighten-limits verified" in out
    assert "recovered scale-replicas verified" in out
    assert "replicas: 4 -> 2" in out  # restore-baseline put the lab back
    assert "demo: every verdict found and fixed" in out
    # The lab it started is gone: no state file, no control socket left.
    assert not (tmp_path / "demo" / "lab" / "lab.json").exists()
    assert (tmp_path / "demo" / "lab" / "quell.db").exists()

    # The post-incident report of the surge, from the demo's own store.
    store = tmp_path / "demo" / "lab" / "quell.db"
    md = tmp_path / "report" / "surge.md"
    made = subprocess.run(
        quell_command("report", "1", "--store", str(store), "--out", str(md)),
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    text = md.read_text()
    assert text.startswith("# Incident 1: producer_surge on gateway")
    assert "playbook tighten-limits" in text and "-> 5" in text  # before -> after values
    assert "## Capacity advice" in text and "service capacity now" in text
    for chart in ("rates", "depth", "wait"):
        svg = (md.parent / f"surge-{chart}.svg").read_text()
        assert svg.startswith("<svg") and "<polyline" in svg
    page = tmp_path / "report" / "latest.html"
    made = subprocess.run(
        quell_command("report", "--store", str(store), "--out", str(page)),
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "consumer_slowdown" in page.read_text() and page.read_text().count("<svg") == 3
    bad = subprocess.run(
        quell_command("report", "99", "--store", str(store), "--out", str(md)),
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "no incident 99" in bad.stderr


def test_the_demo_on_screen_asks_before_a_playbook_and_leaves_nothing_when_its_terminal_goes(
    tmp_path: Path,
) -> None:
    tmux = Tmux(require_program("tmux", "tmux"))
    env = f"QUELL_STATE_DIR={tmp_path / 'elsewhere'} TERM=xterm-256color"
    command = " ".join(quell_command("demo", "--keep", str(tmp_path / "demo")))
    tmux("new-session", "-d", "-x", "110", "-y", "34", "-s", "console", f"exec env {env} {command}")
    try:
        pid = int(tmux("display-message", "-p", "-t", "console", "#{pane_pid}").strip())
        # The surge starts at 0.12 of 90 s; the verdict, then the question.
        screen = wait_for_screen(tmux, "Run tighten-limits?", "-> ", "y apply", within_s=60)
        assert "IMBALANCE" in screen and "producer_surge" in screen
        lab = json.loads((tmp_path / "demo" / "lab" / "lab.json").read_text())
        pids = lab_pids(lab)
        tmux.kill_server()  # an SSH session drops with the question still open
        assert wait_gone([pid, *pids], timeout=15) == [], "the demo left processes behind"
    finally:
        tmux.kill_server()
