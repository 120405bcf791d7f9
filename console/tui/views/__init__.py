"""The console's screens, one module each, registered by view id (see ``keys.VIEWS``).

A screen's module is imported, and the screen mounted, the first time it is
shown: starting the console pays only for the Overview, which is what the
first frame needs.
"""

from __future__ import annotations

import importlib

from console.tui.views.base import Update, View

# Adding a screen: its ViewInfo in keys.VIEWS (tab order, title, key) and
# its module and class here.
VIEW_MODULES: dict[str, tuple[str, str]] = {
    "overview": ("console.tui.views.overview", "OverviewView"),
    "queues": ("console.tui.views.queues", "QueuesView"),
    "host": ("console.tui.views.host", "HostScreenView"),
    "gpu": ("console.tui.views.gpu", "GpuScreenView"),
    "logs": ("console.tui.views.logs", "LogsView"),
    "diagnosis": ("console.tui.views.diagnosis", "DiagnosisView"),
    "playbooks": ("console.tui.views.playbooks", "PlaybooksView"),
    "incidents": ("console.tui.views.incidents", "IncidentsView"),
}


def view_class(view_id: str) -> type[View]:
    module, name = VIEW_MODULES[view_id]
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type) and issubclass(found, View)
    return found


__all__ = ["VIEW_MODULES", "Update", "View", "view_class"]
