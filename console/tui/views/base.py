"""What every screen of the console is given, and what it answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from textual import events
from textual.containers import Vertical

from console.tui.snapshot import AdviceView, Snapshot


@dataclass(frozen=True)
class Update:
    """One refresh: the moment's snapshot and how the console runs."""

    snapshot: Snapshot
    mode: str  # keys.LIVE or keys.REPLAY
    read_only: bool
    # Command id -> the key that runs it now, as shown (after rebinding).
    keys: Mapping[str, str] = field(default_factory=dict)
    advice: Mapping[str, AdviceView] = field(default_factory=dict)

    def key(self, command_id: str) -> str:
        return self.keys.get(command_id, "?")


class View(Vertical):
    """A screen inside the console's frame; only the visible one is refreshed."""

    view_id: ClassVar[str] = ""
    DEFAULT_CSS = """
    View { height: 1fr; }
    """

    _last_update: Update | None = None
    _drawn_width = 0

    def show(self, update: Update) -> None:
        """Show ``update`` now, and again should the view's width change."""
        self._last_update = update
        self._drawn_width = self.size.width
        self.refresh_view(update)

    def on_resize(self, event: events.Resize) -> None:
        # A view mounted on its key press is drawn before layout gives it a
        # width; in a paused replay no later refresh comes to mend the
        # guessed layout.
        if self._last_update is not None and event.size.width != self._drawn_width:
            self.show(self._last_update)

    def refresh_view(self, update: Update) -> None:
        """Show ``update``; cheap when nothing this view shows has changed."""

    def detail_target(self) -> str | None:
        """A target whose own history this view needs read (the Queues drill-in)."""
        return None

    def focus_main(self) -> None:
        """Give the keyboard to the view's main widget, if it has one."""
