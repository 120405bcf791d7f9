"""A Static that repaints only when what it shows has changed."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType
from textual.widgets import Static

_NOTHING = object()


class LiveStatic(Static):
    """Updated once a refresh with a key for its content; an equal key costs no repaint.

    Keys are the frozen view values the content is drawn from, so comparing
    them is cheap and exact, and an unchanged panel writes nothing to the
    terminal (the link may be a slow SSH session).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._shown: object = _NOTHING

    def show(self, key: object, build: Callable[[], RenderableType]) -> bool:
        if key == self._shown:
            return False
        self._shown = key
        self.update(build())
        return True

    def forget(self) -> None:
        """Draw again at the next ``show`` (the theme changed)."""
        self._shown = _NOTHING
