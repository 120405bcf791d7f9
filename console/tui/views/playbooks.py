"""Playbooks: a placeholder until the playbooks package is wired into the console.

TODO(playbooks screen): list the playbooks, show a dry-run plan, run one
through a confirmation dialog that shows current -> new values, stream its
step output, and show history and rollback. Replace this class in
``views.VIEW_MODULES``; the tab, its key and the ``playbook.run`` command
(mutating, so hidden under --read-only) already exist in ``keys.py``.
"""

from __future__ import annotations

from rich.panel import Panel
from rich.text import Text
from textual.app import ComposeResult

from console.tui.views.base import Update, View
from console.tui.widgets.live_static import LiveStatic


def placeholder(recommended: tuple[tuple[str, tuple[str, ...]], ...], read_only: bool) -> Panel:
    body = Text.assemble(
        ("Playbooks are not wired into the console yet.\n\n", "bold"),
        "List them with ", ("quell play --list", "bold"), "; in a shell, ",
        ("quell play NAME --dry-run", "bold"), " shows what one would change and ",
        ("quell play NAME", "bold"), " runs it; ", ("quell play --history", "bold"),
        " lists past runs.\n",
    )  # fmt: skip
    for target, names in recommended:
        body.append(f"\nrecommended now for {target}: ", style="bold")
        body.append(", ".join(names))
    if read_only:
        body.append("\n\nread-only: actions are hidden.", style="bold")
    return Panel(body, title="Playbooks (coming)", title_align="left", border_style="blue",
                 padding=(1, 2))  # fmt: skip


class PlaybooksView(View):
    view_id = "playbooks"

    def __init__(self) -> None:
        super().__init__(id="playbooks")

    def compose(self) -> ComposeResult:
        yield LiveStatic(id="playbooks-body")

    def refresh_view(self, update: Update) -> None:
        recommended = tuple(
            (v.target, v.playbooks) for v in update.snapshot.verdicts if v.playbooks
        )
        self.query_one("#playbooks-body", LiveStatic).show(
            (recommended, update.read_only), lambda: placeholder(recommended, update.read_only)
        )
