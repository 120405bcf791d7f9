"""Leaving cleanly when the terminal goes away.

Textual installs no SIGHUP handler (textual#5140), and when the terminal is
gone its input thread finds stdin readable with nothing to read, and loops
on it: the spinning process left behind after an SSH drop (Dolphie #101).
Three things end the console instead:

- SIGHUP, SIGTERM and SIGINT run the console's normal exit (stop the
  collector, write what it buffered, restore the terminal);
- a watchdog thread blocks in poll() on the terminal's descriptors. Asked for
  no events, poll() still reports POLLHUP, POLLERR and POLLNVAL, so the
  thread sleeps in the kernel, using no CPU, and wakes the moment the
  terminal hangs up, which also covers a console that never got the SIGHUP
  (started under nohup, or not in the terminal's session);
- a hang-up (SIGHUP or the watchdog) stops the collector, closes the store
  and then ends the process at once: there is no screen left to restore, and
  restoring it can block for good (Textual's writer thread dies on the first
  failed write, and the next write waits on its full queue);
- once any of these exits has begun, a timer ends the process outright if
  it has not finished in ``HARD_EXIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

HARD_EXIT_S = 3.0
GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL
SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class SignalGuard:
    """SIGHUP, SIGTERM and SIGINT: arm the hard exit, then ask the event loop to leave.

    Installed with ``signal.signal``, not ``loop.add_signal_handler``: an
    asyncio handler runs on the event loop, and the loop may be the thing
    that is stuck (blocked writing to a terminal that is gone). A plain
    handler runs on the main thread even then, since a blocked lock wait is
    interrupted to run it, so the hard exit is armed whatever the loop does.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]
    ) -> None:
        self._loop = loop
        self._on_signal = on_signal
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)

    def remove(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        arm_hard_exit()
        with contextlib.suppress(RuntimeError):  # the loop is closed: it is leaving anyway
            self._loop.call_soon_threadsafe(self._on_signal, signal.Signals(signum))


def terminal_fds() -> list[int]:
    """The standard descriptors that are terminals: what Textual reads and writes."""
    found = []
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                found.append(fd)
    return found


class TerminalWatchdog(threading.Thread):
    """Calls ``on_gone`` once, from this thread, when any of ``fds`` hangs up."""

    def __init__(self, fds: list[int], on_gone: Callable[[], None], poll_ms: int = 1000) -> None:
        super().__init__(name="quell-terminal-watchdog", daemon=True)
        self._fds = fds
        self._on_gone = on_gone
        self._poll_ms = poll_ms
        self._stopped = threading.Event()

    def run(self) -> None:
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, 0)
        # The timeout only bounds how long stop() waits; a hang-up wakes the
        # poll at once.
        while not self._stopped.is_set():
            try:
                events = poller.poll(self._poll_ms)
            except InterruptedError:
                continue
            if any(mask & GONE for _, mask in events):
                if not self._stopped.is_set():
                    self._on_gone()
                return

    def stop(self) -> None:
        self._stopped.set()


def end_now(code: int) -> None:
    """End the process without restoring a terminal that is no longer there."""
    os._exit(code)


def arm_hard_exit(seconds: float = HARD_EXIT_S, code: int = 0) -> threading.Timer:
    """End the process in ``seconds`` unless it has ended by then."""
    timer = threading.Timer(seconds, os._exit, (code,))
    timer.daemon = True
    timer.start()
    return timer
