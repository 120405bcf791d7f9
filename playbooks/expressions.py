"""The small expression language of playbook files.

Values in a playbook may be templates, ``"{{ round(0.4 * signals.service_rate, 1) }}"``,
and verifications are conditions, ``"service_rate >= 0.95 * offered_rate"``.
Both are parsed with Python's own parser and then held to a short list of
node kinds: numbers, strings, lists, names and dotted names, arithmetic,
comparisons, ``and``/``or``/``not``, and the functions ``min``, ``max``,
``round``, ``abs``, ``int``, ``float``. Nothing else evaluates, so a playbook
file cannot run code, reach attributes of Python objects, or read a secret
except through ``env.NAME``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
MAX_LENGTH = 500

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "round": round,
    "abs": abs,
    "int": int,
    "float": float,
}


class ExpressionError(ValueError):
    """An expression that cannot be read, or names a value that is not there."""


class Unknown(ExpressionError):
    """A name the expression uses has no value now (a signal not yet read, say)."""


def check(text: str) -> ast.expr:
    """Parse ``text`` and refuse every construct outside the language."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"an expression is at most {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"cannot parse {text.strip()!r}: {error.msg}") from None
    except (UnicodeError, ValueError, RecursionError, MemoryError):
        # A lone surrogate (YAML makes two of an escaped emoji) or a null byte.
        raise ExpressionError(f"cannot parse {text.strip()!r}: not valid text") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                raise ExpressionError(
                    f"only {', '.join(_FUNCTIONS)} may be called in {text.strip()!r}"
                )
            if node.keywords:
                raise ExpressionError(f"no keyword arguments in {text.strip()!r}")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise ExpressionError(f"no private names in {text.strip()!r}")
        elif isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ExpressionError(f"no private names in {text.strip()!r}")
        elif not isinstance(
            node,
            ast.Expression
            | ast.Constant
            | ast.BinOp
            | ast.UnaryOp
            | ast.BoolOp
            | ast.Compare
            | ast.List
            | ast.Tuple
            | ast.Load
            | ast.operator
            | ast.unaryop
            | ast.boolop
            | ast.cmpop,
        ):
            raise ExpressionError(
                f"{type(node).__name__.lower()} is not allowed in {text.strip()!r}"
            )
        if isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            raise ExpressionError(f"operator not allowed in {text.strip()!r}")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub | ast.Not):
            raise ExpressionError(f"operator not allowed in {text.strip()!r}")
    return tree.body


def names(text: str) -> set[str]:
    """The dotted names an expression reads (``signals.depth``, ``params.factor``)."""
    found: set[str] = set()
    for node in ast.walk(check(text)):
        dotted = _dotted(node)
        if dotted is not None:
            found.add(dotted)
    return found


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """The value of ``text`` where names are looked up in ``scope`` (nested mappings)."""
    return _eval(check(text), scope, text.strip())


def _lookup(node: ast.AST, scope: Mapping[str, Any], text: str) -> Any:
    if isinstance(node, ast.Name):
        if node.id in _FUNCTIONS:
            raise ExpressionError(f"{node.id} must be called in {text!r}")
        if node.id not in scope:
            raise Unknown(f"{node.id!r} is not known in {text!r}; known: {', '.join(scope)}")
        return scope[node.id]
    assert isinstance(node, ast.Attribute)
    outer = _lookup(node.value, scope, text)
    if not isinstance(outer, Mapping):
        raise ExpressionError(f"{_dotted(node.value)} has no fields in {text!r}")
    if node.attr not in outer:
        known = ", ".join(sorted(outer)) or "none now"
        raise Unknown(f"{_dotted(node)} has no value in {text!r}; known: {known}")
    return outer[node.attr]


def _eval(node: ast.AST, scope: Mapping[str, Any], text: str) -> Any:
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name | ast.Attribute):
            return _lookup(node, scope, text)
        if isinstance(node, ast.List | ast.Tuple):
            return [_eval(e, scope, text) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            value = _eval(node.operand, scope, text)
            return (not value) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.BinOp):
            result = _BINARY[type(node.op)](
                _eval(node.left, scope, text), _eval(node.right, scope, text)
            )
            if isinstance(result, float) and not math.isfinite(result):
                raise ExpressionError(f"{text!r} is not a finite number")
            return result
        if isinstance(node, ast.BoolOp):
            values = (_eval(v, scope, text) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare):
            left = _eval(node.left, scope, text)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = _eval(comparator, scope, text)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [_eval(a, scope, text) for a in node.args]
            return _FUNCTIONS[node.func.id](*args)
    except ExpressionError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as error:
        raise ExpressionError(f"cannot evaluate {text!r}: {error}") from None
    raise ExpressionError(f"cannot evaluate {text!r}")


def is_template(value: object) -> bool:
    return isinstance(value, str) and TEMPLATE.search(value) is not None


def check_template(value: str) -> set[str]:
    """Parse every ``{{ }}`` in ``value``; the names they read."""
    found: set[str] = set()
    for match in TEMPLATE.finditer(value):
        found |= names(match.group(1))
    return found


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Templates in ``value`` (strings, lists, mappings) filled from ``scope``.

    A string that is one template keeps the value's type (a number stays a
    number); templates inside longer text become text.
    """
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole:
            return evaluate(whole.group(1), scope)
        return TEMPLATE.sub(lambda m: str(evaluate(m.group(1), scope)), value)
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    return value


def reads_env(value: Any) -> bool:
    """Whether rendering ``value`` reads the environment (so the result is a secret)."""
    return any(n == "env" or n.startswith("env.") for n in check_template_names(value))


def check_template_names(value: Any) -> set[str]:
    """Every name read by the templates inside ``value`` (strings, lists, mappings)."""
    if isinstance(value, str):
        return check_template(value)
    if isinstance(value, list):
        return set().union(*(check_template_names(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(check_template_names(v) for v in value.values())) if value else set()
    return set()
