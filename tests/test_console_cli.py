"""`quell console` refuses what it cannot show, before it takes the terminal, with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import quell_command


def console(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUELL_STATE_DIR": str(state_dir), "XDG_CONFIG_HOME": str(state_dir)}
    return subprocess.run(
        quell_command("console", *args), capture_output=True, text=True, timeout=60, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_without_a_lab_a_store_or_a_config_it_says_what_to_give(tmp_path: Path) -> None:
    done = console(state_dir=tmp_path)
    assert done.returncode == 2
    assert "no lab is running" in done.stderr and "--replay PATH" in done.stderr


def test_a_store_nobody_writes_is_for_replay_not_for_attaching(tmp_path: Path) -> None:
    missing = console("--replay", str(tmp_path / "none.db"), state_dir=tmp_path)
    assert missing.returncode == 2 and "no store at" in missing.stderr
    (tmp_path / "idle.db").write_bytes(b"")
    unwritten = console("--store", str(tmp_path / "idle.db"), state_dir=tmp_path)
    assert unwritten.returncode == 2
    assert f"replay it with --replay {tmp_path / 'idle.db'}" in unwritten.stderr
    not_a_store = console("--replay", str(tmp_path / "idle.db"), state_dir=tmp_path)
    assert not_a_store.returncode == 2 and "quell:" in not_a_store.stderr


def test_bad_settings_are_named_before_anything_starts(tmp_path: Path) -> None:
    settings = tmp_path / "quell" / "console.toml"
    settings.parent.mkdir()
    settings.write_text('[keys]\n"view.nothing" = "x"\n')
    done = console("--replay", str(tmp_path / "x.db"), state_dir=tmp_path)
    assert done.returncode == 2 and "keys.view.nothing: no such command" in done.stderr


def test_quell_help_does_not_load_textual() -> None:
    check = (
        "import sys\nfrom console.cli import build_parser\nbuild_parser()\n"
        "assert 'textual' not in sys.modules, 'textual loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
