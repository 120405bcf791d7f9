"""`quell console` in real terminals: tmux against a live lab, and a pty that goes away.

The tmux test reads the screen as a person would (``capture-pane``) while a
producer surge runs against the lab, then takes the terminal away and
checks the console is gone within 5 s. The pty tests cover what tmux does
not: a console that gets no SIGHUP when its terminal goes (only the
watchdog can notice), and SIGTERM with the terminal still there.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from collectors.diagnosis import CAUSES, PLAYBOOKS
from collectors.store import writer_pid
from tests.conftest import require_program
from tests.console_store import recorded_store
from tests.lab_helpers import alive, lab_pids, lab_state, quell, wait_gone
from tests.servers import quell_command

EXIT_LIMIT_S = 5.0


def gone_within(pid: int, seconds: float) -> float | None:
    """Seconds until ``pid`` is gone (a zombie counts as gone), or None if it outlived them."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not alive(pid):
            return time.monotonic() - started
        time.sleep(0.02)
    return None


# -- tmux and the lab ------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    result = quell(tmp_path, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab_state(tmp_path)
    state["state_dir"] = str(tmp_path)
    yield state
    quell(tmp_path, "lab", "down")
    assert wait_gone(lab_pids(state)) == []


class Tmux:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        # A server of our own: the test never touches a person's sessions.
        self.socket = f"quell-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console")

    def kill_server(self) -> None:
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)  # fmt: skip


def wait_for_screen(tmux: Tmux, *wanted: str, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.screen()
        if all(text in screen for text in wanted):
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{wanted} not on screen within {within_s} s; the screen:\n{screen}")


def test_the_console_in_tmux_shows_the_verdict_of_a_surge_and_dies_with_its_terminal(
    lab: dict[str, Any],
) -> None:
    tmux = Tmux(require_program("tmux", "tmux"))
    env = f"QUELL_STATE_DIR={lab['state_dir']} TERM=xterm-256color"
    command = " ".join(quell_command("console"))
    tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "console", f"exec env {env} {command}")
    try:
        pid = int(tmux("display-message", "-p", "-t", "console", "#{pane_pid}").strip())
        wait_for_screen(tmux, "HEALTHY", "gateway", "collecting", within_s=15)
        load = subprocess.Popen(
            quell_command("load", "--scenario", "producer_surge", "--time-scale", "0.4",
                          "--duration", "24", "--quiet"),
            env={**os.environ, "QUELL_STATE_DIR": lab["state_dir"]},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # The surge starts 8 s in; a verdict takes a few ticks after it.
            screen = wait_for_screen(tmux, "IMBALANCE", "gateway:", "playbooks:", within_s=25)
        finally:
            load.terminate()
            load.wait(10)
        # Which cause is diagnosis's business (tests/test_daemon_diagnosis.py,
        # bench/diagnosis.py); a baseline of a few seconds can read a surge's
        # batching as slower service. The banner must name one, with its playbooks.
        cause = next((c for c in CAUSES if f"gateway: {c}, confidence" in screen), None)
        assert cause is not None, screen
        assert f"playbooks: {PLAYBOOKS[cause][0]}" in screen
        tmux.kill_server()  # the terminal goes away, as when an SSH session drops
        took = gone_within(pid, EXIT_LIMIT_S)
        assert took is not None, f"the console outlived its terminal by {EXIT_LIMIT_S} s"
        store = Path(lab["lab_dir"]) / "quell.db"
        assert writer_pid(store) is None, "the console's collector still holds the store"
    finally:
        tmux.kill_server()


# -- a pty of our own --------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recorded_store(tmp_path_factory.mktemp("terminal") / "surge.db")


def console_in_pty(store: Path, *, own_session: bool) -> tuple[subprocess.Popen[bytes], int]:
    """`quell console --replay` on a fresh pty; (process, master fd).

    ``own_session``: the console starts a session of its own without taking
    the pty as its controlling terminal, so closing the pty sends it no
    SIGHUP and only its watchdog can notice.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "console", "--replay", str(store)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=own_session,
        env={**os.environ, "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(slave)
    return process, master


def read_until(master: int, marker: bytes, within_s: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + within_s
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            seen += os.read(master, 65536)
    assert marker in seen, f"no {marker!r} from the console within {within_s} s"
    return seen


def test_the_watchdog_ends_a_console_whose_terminal_vanishes_without_a_hangup_signal(
    recorded: Path,
) -> None:
    process, master = console_in_pty(recorded, own_session=True)
    try:
        read_until(master, b"HEALTHY", within_s=15)
        cpu = psutil.Process(process.pid).cpu_times()
        before = cpu.user + cpu.system
        os.close(master)
        master = -1
        started = time.monotonic()
        _, status, usage = os.wait4(process.pid, 0)
        took = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        assert took < EXIT_LIMIT_S
        # A console spinning on a dead terminal burns a core for as long as it lives.
        spent = usage.ru_utime + usage.ru_stime - before
        assert spent < 0.5 * max(took, 0.2) + 0.3, f"{spent:.2f} s of CPU in {took:.2f} s"
    finally:
        if master >= 0:
            os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_sigterm_ends_it_cleanly_and_gives_the_terminal_back(recorded: Path) -> None:
    process, master = console_in_pty(recorded, own_session=True)
    try:
        read_until(master, b"HEALTHY", within_s=15)
        process.send_signal(signal.SIGTERM)
        # Leaving the alternate screen is the last thing a clean exit writes.
        read_until(master, b"\x1b[?1049l", within_s=EXIT_LIMIT_S)
        assert process.wait(EXIT_LIMIT_S) == 0
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait(5)
