"""Reading playbook files: YAML in, a checked ``Playbook`` out, or an error with a line.

Everything is checked before anything can run: unknown keys, types, bounds,
action names and their arguments, every expression and template. A mistake
names the file, the line and what was expected, because the person reading
it is in the middle of an incident.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from collectors.diagnosis import CAUSES
from playbooks import expressions
from playbooks.model import (
    PARAM_TYPES,
    Auto,
    Param,
    Playbook,
    PlaybookError,
    Preconditions,
    Step,
)

NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
MAX_FILE_BYTES = 256 * 1024
MAX_STEPS = 100
SCOPES = ("params", "signals", "env", "verdict", "replicas", "target")


class _Map(dict[str, Any]):
    line = 0
    lines: dict[str, int]


class _List(list[Any]):
    line = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping value and list item."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise PlaybookError(f"line {line}: keys must be text, got {key!r}")
        if key in result:
            raise PlaybookError(f"line {line}: {key!r} is given twice")
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _List:
    result = _List()
    result.line = node.start_mark.line + 1
    result.lines = []
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(item.start_mark.line + 1)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def builtin_dir() -> Path:
    return Path(str(resources.files("playbooks") / "library"))


def duration(value: Any, where: str) -> float:
    """Seconds from a number or text such as ``30s``, ``5m``, ``1h``, ``500ms``."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a duration such as 30s or 5m, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"{where} must be from 0 to 24h, got a number that large") from None
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{where} must be a duration such as 30s or 5m, got {value!r}")
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    if not math.isfinite(seconds):
        raise ValueError(f"{where} must be from 0 to 24h, got {value!r}")
    if not 0 <= seconds <= 86400:
        raise ValueError(f"{where} must be from 0 to 24h, got {value!r}")
    return seconds


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, message: str) -> PlaybookError:
        return PlaybookError(f"{self.path}:{line}: {message}")

    def table(self, value: Any, where: str, line: int, known: Iterable[str]) -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(line, f"{where} must be a mapping, got {_kind(value)}")
        known = tuple(known)
        for key in value:
            if key not in known:
                raise self.fail(
                    value.lines[key],
                    f"unknown key {key!r} in {where}; expected one of {', '.join(known)}",
                )
        return value

    def text(self, table: _Map, key: str, where: str, default: str | None = None) -> str:
        if key not in table:
            if default is None:
                raise self.fail(table.line, f"{where}.{key} is required")
            return default
        value = table[key]
        if not isinstance(value, str):
            raise self.fail(table.lines[key], f"{where}.{key} must be text, got {_kind(value)}")
        return value

    def words(self, table: _Map, key: str, where: str, allowed: Iterable[str]) -> tuple[str, ...]:
        if key not in table:
            return ()
        value = table[key]
        line = table.lines[key]
        items = [value] if isinstance(value, str) else value
        allowed = tuple(allowed)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise self.fail(line, f"{where}.{key} must be a list of words")
        for item in items:
            if item not in allowed:
                raise self.fail(line, f"{where}.{key}: {item!r} is not one of {', '.join(allowed)}")
        return tuple(items)

    def number(
        self, table: _Map, key: str, where: str, default: float, low: float, high: float
    ) -> float:
        if key not in table:
            return default
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (low <= value <= high)
        ):
            raise self.fail(
                table.lines[key],
                f"{where}.{key} must be a number from {low:g} to {high:g}, got {value!r}",
            )
        return float(value)

    def seconds(self, table: _Map, key: str, where: str, default: float) -> float:
        if key not in table:
            return default
        try:
            return duration(table[key], f"{where}.{key}")
        except ValueError as error:
            raise self.fail(table.lines[key], str(error)) from None

    def flag(self, table: _Map, key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(table.lines[key], f"{where}.{key} must be true or false")
        return value

    def expression(self, text: Any, line: int, where: str, scopes: Iterable[str]) -> str:
        if not isinstance(text, str):
            raise self.fail(line, f"{where} must be an expression as text, got {_kind(text)}")
        try:
            used = expressions.names(text)
        except expressions.ExpressionError as error:
            raise self.fail(line, f"{where}: {error}") from None
        self._scopes(used, line, where, scopes)
        return text.strip()

    def template(self, value: Any, line: int, where: str, scopes: Iterable[str]) -> None:
        """Check every template inside ``value`` (strings, lists, mappings)."""
        if isinstance(value, str):
            try:
                used = expressions.check_template(value)
            except expressions.ExpressionError as error:
                raise self.fail(line, f"{where}: {error}") from None
            self._scopes(used, line, where, scopes)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                item_line = value.lines[i] if isinstance(value, _List) else line
                self.template(item, item_line, f"{where}[{i}]", scopes)
        elif isinstance(value, dict):
            for key, item in value.items():
                item_line = value.lines.get(key, line) if isinstance(value, _Map) else line
                self.template(item, item_line, f"{where}.{key}", scopes)

    def _scopes(self, used: set[str], line: int, where: str, scopes: Iterable[str]) -> None:
        scopes = tuple(scopes)
        for name in sorted(used):
            root = name.split(".", 1)[0]
            if "signals" in scopes and root not in SCOPES:
                continue  # a bare signal name in a condition: occupancy < 0.7
            if root not in scopes:
                raise self.fail(
                    line,
                    f"{where}: {name!r} is not available here; use one of "
                    f"{', '.join(s + '.NAME' for s in scopes)}",
                )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _param(reader: _Reader, name: str, value: Any, line: int) -> Param:
    where = f"params.{name}"
    if not re.match(r"^[a-z][a-z0-9_]{0,40}$", name):
        raise reader.fail(line, f"{where}: a parameter name is lower-case letters, digits, _")
    table = reader.table(
        value, where, line, ("type", "default", "min", "max", "choices", "description")
    )
    kind = reader.text(table, "type", where)
    if kind not in PARAM_TYPES:
        raise reader.fail(
            table.lines["type"], f"{where}.type must be one of {', '.join(PARAM_TYPES)}"
        )
    low = reader.number(table, "min", where, float("-inf"), float("-inf"), float("inf"))
    high = reader.number(table, "max", where, float("inf"), float("-inf"), float("inf"))
    if low > high:
        raise reader.fail(table.line, f"{where}: min is above max")
    choices = table.get("choices", [])
    if not isinstance(choices, list):
        raise reader.fail(table.lines["choices"], f"{where}.choices must be a list")
    default = table.get("default")
    if default is not None:
        reader.template(
            default, table.lines["default"], f"{where}.default", ("signals", "replicas", "verdict")
        )
        if not expressions.is_template(default):
            try:
                default = coerce(
                    Param(name, kind, None, _finite(low), _finite(high), tuple(choices)), default
                )
            except ValueError as error:
                raise reader.fail(table.lines["default"], str(error)) from None
    return Param(
        name=name,
        type=kind,
        default=default,
        min=_finite(low),
        max=_finite(high),
        choices=tuple(choices),
        description=reader.text(table, "description", where, ""),
        required="default" not in table,
    )


def _finite(value: float) -> float | None:
    return None if value in (float("inf"), float("-inf")) else value


def coerce(param: Param, value: Any) -> Any:
    """``value`` (from the file, the command line or a template) as the parameter's type."""
    where = f"parameter {param.name}"
    try:
        if param.type == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            result: Any = int(value)
        elif param.type == "float":
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if result != result or result in (float("inf"), float("-inf")):
                raise ValueError
        elif param.type == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                result = value.lower() in ("true", "yes", "1")
            elif isinstance(value, bool):
                result = value
            else:
                raise ValueError
        elif param.type == "list":
            if isinstance(value, str):
                result = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list):
                result = list(value)
            else:
                raise ValueError
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            result = str(value)
    except (TypeError, ValueError, OverflowError):
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise ValueError(f"{where} must be {_article(param.type)}, got {shown}") from None
    if param.type in ("int", "float"):
        if param.min is not None and result < param.min:
            raise ValueError(f"{where} must be at least {param.min:g}, got {result!r}")
        if param.max is not None and result > param.max:
            raise ValueError(f"{where} must be at most {param.max:g}, got {result!r}")
    if param.choices:
        values = result if isinstance(result, list) else [result]
        for item in values:
            if item not in param.choices:
                raise ValueError(
                    f"{where}: {item!r} is not one of {', '.join(map(str, param.choices))}"
                )
    return result


def _article(kind: str) -> str:
    return {
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "list": "a list",
        "str": "text",
    }[kind]


def _step(reader: _Reader, value: Any, line: int, where: str, param_names: set[str]) -> Step:
    from playbooks.actions import ACTIONS

    if not isinstance(value, _Map):
        raise reader.fail(line, f"{where} must be a mapping with action, wait or verify")
    kinds = [k for k in ("action", "wait", "verify") if k in value]
    if len(kinds) != 1:
        raise reader.fail(
            value.line,
            f"{where} must have exactly one of action, wait, verify"
            + (f" (has {', '.join(kinds)})" if kinds else ""),
        )
    kind = kinds[0]
    if kind == "wait":
        reader.table(value, where, line, ("wait", "name"))
        return Step(
            "wait",
            value.line,
            name=reader.text(value, "name", where, ""),
            seconds=reader.seconds(value, "wait", where, 0.0),
        )
    if kind == "verify":
        reader.table(value, where, line, ("verify", "within", "for", "name"))
        condition = reader.expression(
            value["verify"], value.lines["verify"], f"{where}.verify", ("signals", "params")
        )
        within = reader.seconds(value, "within", where, 30.0)
        held = reader.seconds(value, "for", where, 0.0)
        if held > within:
            raise reader.fail(value.line, f"{where}: 'for' is longer than 'within'")
        return Step(
            "verify",
            value.line,
            name=reader.text(value, "name", where, ""),
            condition=condition,
            within_s=within,
            for_s=held,
        )
    reader.table(value, where, line, ("action", "args", "name"))
    action = reader.text(value, "action", where)
    if action not in ACTIONS:
        raise reader.fail(
            value.lines["action"],
            f"{where}.action: unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}",
        )
    args = value.get("args", _Map())
    if not isinstance(args, dict):
        raise reader.fail(value.lines.get("args", value.line), f"{where}.args must be a mapping")
    args_line = value.lines.get("args", value.line)
    reader.template(
        args,
        args_line,
        f"{where}.args",
        ("params", "signals", "env", "target", "replicas", "verdict"),
    )
    for name in expressions.check_template_names(args):
        if name.startswith("params.") and name.split(".")[1] not in param_names:
            raise reader.fail(args_line, f"{where}.args: {name} is not a declared parameter")
    try:
        ACTIONS[action].check(dict(args))
    except ValueError as error:
        raise reader.fail(args_line, f"{where} ({action}): {error}") from None
    return Step(
        "action",
        value.line,
        name=reader.text(value, "name", where, ""),
        action=action,
        args=_plain(args),
    )


def _plain(value: Any) -> Any:
    """Drop the line bookkeeping so steps hold ordinary dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _steps(reader: _Reader, value: Any, line: int, where: str, params: set[str]) -> list[Step]:
    if not isinstance(value, _List):
        raise reader.fail(line, f"{where} must be a list of steps")
    if len(value) > MAX_STEPS:
        raise reader.fail(line, f"{where} has more than {MAX_STEPS} steps")
    return [
        _step(reader, item, value.lines[i], f"{where}[{i}]", params) for i, item in enumerate(value)
    ]


TOP_KEYS = (
    "name",
    "description",
    "answers",
    "params",
    "preconditions",
    "steps",
    "rollback",
    "cooldown",
    "max_runs_per_hour",
    "dangerous",
    "warning",
    "auto",
)


def parse(text: str, path: Path) -> Playbook:
    reader = _Reader(path)
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except PlaybookError as error:
        raise PlaybookError(f"{path}:{str(error).removeprefix('line ')}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise PlaybookError(f"{where}: not valid YAML: {problem}") from None
    top = reader.table(document, "the playbook", 1, TOP_KEYS)
    name = reader.text(top, "name", "the playbook")
    if not NAME.match(name):
        raise reader.fail(
            top.lines["name"], "name must be lower-case letters, digits and '-' (at most 63)"
        )
    answers = reader.words(top, "answers", "the playbook", CAUSES)
    params_table = top.get("params", _Map())
    if "params" in top:
        params_table = reader.table(params_table, "params", top.lines["params"], params_table)
    params = tuple(
        _param(reader, key, value, params_table.lines[key]) for key, value in params_table.items()
    )
    param_names = {p.name for p in params}
    pre = Preconditions()
    if "preconditions" in top:
        table = reader.table(
            top["preconditions"],
            "preconditions",
            top.lines["preconditions"],
            ("verdicts", "min_confidence", "conditions"),
        )
        conditions = table.get("conditions", _List())
        if not isinstance(conditions, _List):
            raise reader.fail(table.lines["conditions"], "preconditions.conditions must be a list")
        pre = Preconditions(
            verdicts=reader.words(table, "verdicts", "preconditions", CAUSES),
            min_confidence=reader.number(table, "min_confidence", "preconditions", 0.0, 0.0, 1.0),
            conditions=tuple(
                reader.expression(
                    c, conditions.lines[i], f"preconditions.conditions[{i}]", ("signals", "params")
                )
                for i, c in enumerate(conditions)
            ),
        )
    if "steps" not in top:
        raise reader.fail(top.line, "steps is required (a list of action, wait and verify)")
    steps = _steps(reader, top["steps"], top.lines["steps"], "steps", param_names)
    if not any(s.kind == "action" for s in steps):
        raise reader.fail(top.lines["steps"], "steps must include at least one action")
    rollback: tuple[Step, ...] | None = None
    if "rollback" in top and top["rollback"] != "auto":
        rollback = tuple(
            _steps(reader, top["rollback"], top.lines["rollback"], "rollback", param_names)
        )
    auto: Auto | None = None
    if "auto" in top:
        table = reader.table(top["auto"], "auto", top.lines["auto"], ("verdicts", "min_confidence"))
        verdicts = reader.words(table, "verdicts", "auto", CAUSES)
        if not verdicts:
            raise reader.fail(table.line, "auto.verdicts is required: which verdicts start it")
        auto = Auto(verdicts, reader.number(table, "min_confidence", "auto", 0.8, 0.0, 1.0))
    return Playbook(
        name=name,
        description=reader.text(top, "description", "the playbook", "").strip(),
        path=path,
        answers=answers,
        params=params,
        preconditions=pre,
        steps=tuple(steps),
        rollback=rollback,
        cooldown_s=reader.seconds(top, "cooldown", "the playbook", 0.0),
        max_runs_per_hour=int(reader.number(top, "max_runs_per_hour", "the playbook", 0, 0, 3600)),
        dangerous=reader.flag(top, "dangerous", "the playbook"),
        warning=reader.text(top, "warning", "the playbook", "").strip(),
        auto=auto,
    )


def load_file(path: Path) -> Playbook:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PlaybookError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PlaybookError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise PlaybookError(f"{path}: {error.strerror or error}") from None
    return parse(text, path)


def load_catalog(directories: Iterable[Path] = ()) -> dict[str, Playbook]:
    """The built-ins, then each user directory's ``*.yaml``/``*.yml``; later names win.

    One malformed file stops the load: a catalog that silently lost a
    playbook would fail the person who reaches for it at 3 a.m.
    """
    catalog: dict[str, Playbook] = {}
    for directory in (builtin_dir(), *directories):
        if not directory.is_dir():
            raise PlaybookError(f"{directory}: not a directory of playbooks")
        files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
        for path in files:
            playbook = load_file(path)
            catalog[playbook.name] = playbook
    return catalog
