"""Every command of the console in one table: bindings, `?` help and the palette read it.

A command has an id (``view.logs``, ``replay.play``) that users rebind in
the console settings (``[keys]``), default keys, and where it applies: on
one view, in one mode (replay controls only while replaying), or only when
actions are allowed (``mutating``: hidden, unbound and refused under
``--read-only``). Nothing here imports Textual; the app turns the table into
``Binding`` objects and asks ``available`` before it runs, shows or lists a
command, so the three can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """A screen of the console: its id, tab title and default key."""

    id: str
    title: str
    key: str


# The tab order. A view is added here and in ``views.VIEW_CLASSES``; its
# command comes from this table.
VIEWS: tuple[ViewInfo, ...] = (
    ViewInfo("overview", "Overview", "1"),
    ViewInfo("queues", "Queues", "2"),
    ViewInfo("host", "Host", "3"),
    ViewInfo("gpu", "GPU", "4"),
    ViewInfo("logs", "Logs", "5"),
    ViewInfo("diagnosis", "Diagnosis", "6"),
    ViewInfo("playbooks", "Playbooks", "7"),
    ViewInfo("incidents", "Incidents", "8"),
)
VIEW_IDS = tuple(v.id for v in VIEWS)

LIVE, REPLAY = "live", "replay"


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    keys: str  # Textual key names or single characters, comma-separated
    title: str
    help: str
    action: str  # a Textual action string, run on the app
    views: tuple[str, ...] = ()  # () applies on every view
    modes: frozenset[str] = field(default_factory=lambda: frozenset((LIVE, REPLAY)))
    mutating: bool = False
    group: str = "general"
    # Shown in the palette: false for keys that only make sense as keys
    # (stepping, typing a filter).
    palette: bool = True


def _view_commands() -> tuple[Command, ...]:
    return tuple(
        Command(
            f"view.{v.id}", v.key, f"Show {v.title}", f"switch to the {v.title} screen",
            f"show_view('{v.id}')", group="screens",
        )
        for v in VIEWS
    )  # fmt: skip


_REPLAY = frozenset((REPLAY,))
_LIVE = frozenset((LIVE,))

COMMANDS: tuple[Command, ...] = (
    *_view_commands(),
    Command("view.next", "tab", "Next screen", "the screen to the right", "cycle_view(1)",
            group="screens", palette=False),
    Command("view.previous", "shift+tab", "Previous screen", "the screen to the left",
            "cycle_view(-1)", group="screens", palette=False),
    Command("app.help", "question_mark", "Help", "every command and its keys", "help"),
    Command("app.palette", "ctrl+p", "Command palette", "search the commands by name",
            "command_palette", palette=False),
    Command("app.theme", "t", "Toggle light/dark theme", "switch between the light and dark "
            "themes", "toggle_theme"),
    Command("app.quit", "q", "Quit", "leave the console (a collector it runs stops and "
            "writes what it buffered)", "quit"),
    Command("queues.open", "enter", "Open target", "the selected target's own charts",
            "open_target", views=("queues",), group="queues"),
    Command("queues.sort", "s", "Sort by next column", "cycle the column the table is "
            "sorted by", "sort_targets", views=("queues",), group="queues"),
    Command("queues.reverse", "o", "Reverse sort order", "ascending or descending",
            "reverse_targets", views=("queues",), group="queues"),
    Command("queues.back", "escape", "Back to the table", "close the target's charts",
            "close_target", views=("queues",), group="queues", palette=False),
    Command("logs.filter", "slash", "Filter logs", "show only lines containing a text",
            "filter_logs", views=("logs",), group="logs"),
    Command("logs.clear", "escape", "Clear the log filter", "show every line again",
            "clear_log_filter", views=("logs",), group="logs", palette=False),
    Command("logs.pause", "p", "Pause/resume logs", "stop the log from moving while you read",
            "pause_logs", views=("logs",), group="logs"),
    Command("incidents.replay", "enter", "Replay incident", "replay the store from just before "
            "the selected incident", "replay_incident", views=("incidents",), group="incidents"),
    Command("replay.play", "space", "Play/pause replay", "start or stop the replay clock",
            "replay_toggle", modes=_REPLAY, group="replay"),
    Command("replay.step", "full_stop", "Step forward", "one tick forward (pauses)",
            "replay_step(1)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.step_back", "comma", "Step back", "one tick back (pauses)",
            "replay_step(-1)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.forward", "right_square_bracket", "Seek +10 s", "ten seconds forward",
            "replay_seek(10)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.rewind", "left_square_bracket", "Seek -10 s", "ten seconds back",
            "replay_seek(-10)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.forward_minute", "right_curly_bracket", "Seek +1 min", "a minute forward",
            "replay_seek(60)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.rewind_minute", "left_curly_bracket", "Seek -1 min", "a minute back",
            "replay_seek(-60)", modes=_REPLAY, group="replay", palette=False),
    Command("replay.faster", "plus", "Replay faster", "double the speed", "replay_speed(2.0)",
            modes=_REPLAY, group="replay"),
    Command("replay.slower", "minus", "Replay slower", "halve the speed", "replay_speed(0.5)",
            modes=_REPLAY, group="replay"),
    Command("replay.start", "home", "Seek to start", "the first recorded tick",
            "replay_edge('start')", modes=_REPLAY, group="replay"),
    Command("replay.end", "end", "Seek to end", "the last recorded tick", "replay_edge('end')",
            modes=_REPLAY, group="replay"),
    Command("replay.live", "l", "Back to live", "leave the replay and follow the collector "
            "again", "back_to_live", modes=_REPLAY, group="replay"),
    Command("playbook.run", "r", "Run a playbook", "on Playbooks the selected one, elsewhere "
            "the verdict's first recommendation; shows current -> new values and asks first",
            "run_playbook", modes=_LIVE, mutating=True, group="actions"),
    Command("playbooks.plan", "enter", "Plan playbook", "what the selected playbook would "
            "change now (current -> new); changes nothing", "plan_playbook",
            views=("playbooks",), modes=_LIVE, group="actions"),
    Command("playbooks.undo", "u", "Undo the last run", "put back the values the last applied "
            "run changed (asks first)", "undo_playbook", views=("playbooks",), modes=_LIVE,
            mutating=True, group="actions"),
)  # fmt: skip

COMMAND_IDS = frozenset(c.id for c in COMMANDS)
BY_ACTION = {c.action: c for c in COMMANDS}


@dataclass(frozen=True, slots=True)
class Context:
    """What decides whether a command applies now."""

    view: str
    mode: str
    read_only: bool
    can_go_live: bool = False


def available(command: Command, context: Context) -> bool:
    if command.mutating and context.read_only:
        return False
    if context.mode not in command.modes:
        return False
    if command.views and context.view not in command.views:
        return False
    return not (command.id == "replay.live" and not context.can_go_live)


def keys_of(command: Command, keymap: Mapping[str, str]) -> str:
    """The keys a command answers to now: the user's, else its own."""
    return keymap.get(command.id, command.keys)


def check_keymap(keymap: Mapping[str, object]) -> list[str]:
    """Problems with a ``[keys]`` table, one line each; empty when it is usable."""
    problems = []
    for command_id, keys in keymap.items():
        if command_id not in COMMAND_IDS:
            problems.append(
                f"keys.{command_id}: no such command; known: {', '.join(sorted(COMMAND_IDS))}"
            )
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f'keys.{command_id}: must be a key such as "f" or "ctrl+f"')
    return problems


# Key names as Textual spells them (a "," cannot appear in a binding: it
# separates keys), shown as a person types them.
KEY_DISPLAY = {
    "question_mark": "?", "slash": "/", "full_stop": ".", "comma": ",", "escape": "esc",
    "left_square_bracket": "[", "right_square_bracket": "]", "left_curly_bracket": "{",
    "right_curly_bracket": "}", "plus": "+", "minus": "-", "equals_sign": "=",
}  # fmt: skip


def display_key(keys: str) -> str:
    """The first key of a binding, as a person types it."""
    first = keys.split(",")[0].strip()
    return KEY_DISPLAY.get(first, first)
