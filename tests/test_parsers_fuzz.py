"""Every parser quell has, fed random, mistyped and truncated input.

A config, scenario or playbook that cannot be used must be refused with the
parser's own error and a message that says why; a log line or a scrape that
makes no sense is skipped or refused. Never any other exception: those
reach the person on call as a traceback, in the middle of an incident.

Structured input is built from each parser's own key names, so most
examples get past the top level and into the value checks; the values are
of every TOML type, huge integers and non-finite floats included.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collectors.config import ConfigError as DaemonConfigError
from collectors.config import load_config as load_daemon_config
from collectors.config import parse_config as parse_daemon_config
from collectors.exposition import ExpositionError, parse_exposition
from collectors.log_lines import FORMATS, LogRule, classify
from collectors.logs import LogCollector, decode_line
from inference.gateway.config import ConfigError as GatewayConfigError
from inference.gateway.config import load_config as load_gateway_config
from inference.gateway.config import parse_config as parse_gateway_config
from inference.lab.config import LabConfigError, load_lab_config, parse_lab_config
from inference.lab.scenario import ScenarioError, load_scenario, parse_scenario
from playbooks.loader import builtin_dir
from playbooks.loader import parse as parse_playbook
from playbooks.model import PlaybookError
from tests.gateway_helpers import gateway_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLES = int(os.environ.get("QUELL_PARSER_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- input ----------------------------------------------------------------------

TRICKY_TEXT = (
    "", " ", "0", "-1", "nan", "inf", "1e999", "~", "~no-such-user-here/x", "/", "..",
    "http://", "http://[", "http://[(", "http://h:99999/", "redis://", "http://0",
    "a" * 300, "\x00", "\n", "'", '"', "\\", "{", "[", "%", "${x}", "{{ params.x }}",
    "works queue_full", "30s", "5m", "-5s", "1e9h", "constant", "uniform", "lognormal",
    "all", "critical", "standard", "sheddable", "firing", "json", "auto", "plain",
)  # fmt: skip
HUGE = (10**400, -(10**400), 2**63, -(2**63) - 1, 2**64)

text_values = st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=40))
numbers = st.one_of(
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),
    st.sampled_from((0, 1, -1, 0.0, 0.5, 1e-324, 5e-324, math.inf, -math.inf, math.nan)),
)
scalars = st.one_of(
    text_values,
    numbers,
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)


def toml_values(
    keys: st.SearchStrategy[str], leaves: st.SearchStrategy[Any] = scalars
) -> st.SearchStrategy[Any]:
    """Any TOML value, with table keys mostly drawn from ``keys``."""
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(keys, st.text(max_size=8)), inner, max_size=5),
        ),
        max_leaves=12,
    )


def toml_documents(
    vocabulary: tuple[str, ...], leaves: st.SearchStrategy[Any] = scalars
) -> st.SearchStrategy[dict[str, Any]]:
    """Random documents whose keys are mostly the parser's own."""
    keys = st.sampled_from(vocabulary)
    mostly_known = st.one_of(keys, keys, keys, st.text(max_size=8))
    return st.dictionaries(mostly_known, toml_values(keys, leaves), max_size=8)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _nodes(value, (*path, index))
    return found


def _change(document: Any, change: tuple[tuple[Any, ...], str, Any, str]) -> Any:
    path, operation, value, new_key = change
    if not path:
        return document
    parent = document
    try:
        for step in path[:-1]:
            parent = parent[step]
        if not (
            (isinstance(parent, dict) and isinstance(path[-1], str))
            or (isinstance(parent, list) and isinstance(path[-1], int))
        ):
            return document  # an earlier change retyped a table or a list
        if operation == "replace":
            parent[path[-1]] = value
        elif operation == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[new_key] = value
        else:
            parent.append(value)
    except (KeyError, IndexError, TypeError):
        pass  # an earlier change removed or retyped this node
    return document


def mutated(
    document: dict[str, Any], vocabulary: tuple[str, ...], leaves: st.SearchStrategy[Any] = scalars
) -> st.SearchStrategy[Any]:
    """A working ``document`` with one to three values replaced, removed or added."""
    keys = st.sampled_from(vocabulary)
    changes = st.lists(
        st.tuples(
            st.sampled_from(_nodes(document)[1:]),
            st.sampled_from(("replace", "replace", "delete", "add")),
            toml_values(keys, leaves),
            keys,
        ),
        min_size=1,
        max_size=3,
    )
    return changes.map(lambda chosen: functools.reduce(_change, chosen, copy.deepcopy(document)))


def toml_text(document: Mapping[str, Any]) -> str:
    """Inline TOML: enough for any document the strategies build."""
    return "".join(f"{_string(k)} = {_value(v)}\n" for k, v in document.items())


def _string(text: str) -> str:
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in text
    )
    return f'"{escaped}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_string(k)} = {_value(v)}" for k, v in value.items()) + "}"


def truncations(text: str) -> st.SearchStrategy[str]:
    """``text`` cut short, and cut short with a few bytes of noise after the cut."""
    return st.tuples(st.integers(0, len(text)), st.text(max_size=6)).map(
        lambda cut: text[: cut[0]] + cut[1]
    )


def mutations(text: str) -> st.SearchStrategy[str]:
    """``text`` with one line replaced by a random one."""
    lines = text.splitlines()
    return st.tuples(st.integers(0, max(0, len(lines) - 1)), st.text(max_size=30)).map(
        lambda change: "\n".join([*lines[: change[0]], change[1], *lines[change[0] + 1 :]])
    )


def variants(text: str) -> st.SearchStrategy[str]:
    return st.one_of(truncations(text), mutations(text), st.text(max_size=200))


def refused_or_read(parse: Callable[[], object], error: type[Exception]) -> object | None:
    """The parsed value, or None after ``error`` with a message; anything else fails."""
    try:
        return parse()
    except error as problem:
        assert str(problem).strip(), f"{type(problem).__name__} without a message"
        return None


def scenario_texts() -> list[str]:
    folder = ROOT / "inference" / "lab" / "scenarios"
    return [p.read_text() for p in sorted(folder.glob("*.toml"))]


def playbook_texts() -> list[str]:
    return [p.read_text() for p in sorted(builtin_dir().glob("*.yaml"))]


# -- the gateway's config --------------------------------------------------------

GATEWAY_KEYS = (
    "server", "admin", "queue", "limits", "keys", "upstream_defaults", "upstreams", "cache",
    "host", "port", "max_body_bytes", "max_header_bytes", "body_timeout_s", "state_file",
    "access_log", "access_log_max_bytes", "access_log_backups", "token_sha256", "workers",
    "capacity", "timeout_s", "max_tokens_cap", "requests_per_second", "burst",
    "tokens_per_minute", "name", "sha256", "priority", "url", "api_key_env",
    "connect_timeout_s", "read_timeout_s", "health_path", "health_interval_s",
    "breaker_consecutive_failures", "breaker_error_ratio", "breaker_window_s",
    "breaker_min_requests", "breaker_cooldown_s", "enabled", "ttl_s", "max_entries",
)  # fmt: skip


GATEWAY_DOCUMENT: dict[str, Any] = {
    "server": {"port": 0, "access_log": "access.log", "max_body_bytes": 65536},
    "admin": {"token_sha256": "ab" * 32},
    "queue": {"workers": 4, "capacity": 16, "timeout_s": 2.0, "max_tokens_cap": 64},
    "limits": {"requests_per_second": 5.0, "burst": 10, "tokens_per_minute": 1000},
    "keys": [{"name": "team-a", "sha256": "cd" * 32, "priority": "critical", "burst": 3}],
    "upstream_defaults": {"read_timeout_s": 5.0},
    "upstreams": [{"name": "e0", "url": "http://127.0.0.1:8000", "breaker_window_s": 10.0}],
    "cache": {"enabled": True, "ttl_s": 30.0, "max_entries": 100},
}


@FUZZ
@given(st.one_of(toml_documents(GATEWAY_KEYS), mutated(GATEWAY_DOCUMENT, GATEWAY_KEYS)))
# An unclosed IPv6 bracket made urlsplit raise a plain ValueError.
@example({"upstreams": [{"name": "e0", "url": "http://[("}]})
def test_the_gateway_config_refuses_what_it_cannot_use(document: dict[str, Any]) -> None:
    refused_or_read(lambda: parse_gateway_config(document, {}), GatewayConfigError)


@FUZZ
@given(data=st.data())
def test_a_truncated_or_garbled_gateway_config_file_is_refused(
    tmp_path_factory: Any, data: st.DataObject
) -> None:
    folder = tmp_path_factory.mktemp("gateway")
    valid = gateway_config(folder, {"e0": "http://127.0.0.1:8000"}).read_text()
    path = folder / "fuzzed.toml"
    raw = data.draw(st.one_of(variants(valid).map(str.encode), st.binary(max_size=64)))
    path.write_bytes(raw)
    refused_or_read(lambda: load_gateway_config(path, {}), GatewayConfigError)


def test_the_documents_the_mutations_start_from_are_valid() -> None:
    parse_gateway_config(GATEWAY_DOCUMENT, {})
    parse_lab_config(toml_text(LAB_DOCUMENT), "lab.toml")
    for text in scenario_texts():
        parse_scenario(toml_text(tomllib.loads(text)), "written-back.toml")
    for document in daemon_documents():
        parse_daemon_config(document, base=Path("/tmp"), origin="quell.toml")
    for text in playbook_texts():
        parse_playbook(json.dumps(yaml.safe_load(text)), Path("written-back.yaml"))


# -- the lab's config and its scenarios -----------------------------------------

LAB_KEYS = (
    "replicas", "engine", "gateway", "keys", "slots", "max_waiting", "kv_tokens",
    "decode_step_ms", "decode_ms_per_seq", "prefill_ms_per_token", "workers", "capacity",
    "timeout_s", "name", "priority", "requests_per_second", "burst",
)  # fmt: skip
SCENARIO_KEYS = (
    "name", "cause", "onset_s", "duration_s", "description", "traffic", "faults",
    "precursors", "arrival", "unit", "profile", "prompt_tokens", "max_tokens",
    "stream_share", "keys", "client", "max_retries", "timeout_s", "phases", "at_s",
    "replica", "set", "clear", "crash", "cpu_hog", "gateway_queue", "dist", "value", "low",
    "high", "min", "max", "median", "sigma", "workers", "seconds", "capacity", "slowdown",
)  # fmt: skip


LAB_DOCUMENT: dict[str, Any] = {
    "replicas": 2,
    "engine": {"slots": 8, "max_waiting": 16, "kv_tokens": 4096, "decode_step_ms": 10.0},
    "gateway": {"workers": 8, "capacity": 32, "timeout_s": 5.0},
    "keys": [{"name": "a", "priority": "critical", "requests_per_second": 5.0, "burst": 2}],
}


@FUZZ
@given(st.one_of(toml_documents(LAB_KEYS), mutated(LAB_DOCUMENT, LAB_KEYS)))
@example({"keys": [{"name": "a", "requests_per_second": ""}]})
@example({"keys": [{"name": "a", "burst": [1]}]})
@example({"engine": {"slots": 10**400}})
def test_the_lab_config_refuses_what_it_cannot_use(document: dict[str, Any]) -> None:
    refused_or_read(lambda: parse_lab_config(toml_text(document), "lab.toml"), LabConfigError)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.sampled_from(("replicas = 1" + "0" * 5000,))))
def test_the_lab_config_refuses_random_text(text: str) -> None:
    refused_or_read(lambda: parse_lab_config(text, "lab.toml"), LabConfigError)


@FUZZ
@given(
    st.one_of(
        toml_documents(SCENARIO_KEYS),
        *(mutated(tomllib.loads(text), SCENARIO_KEYS) for text in scenario_texts()),
    )
)
@example({"name": "s", "duration_s": 10**400})
@example({"name": "s", "duration_s": 60, "traffic": {"profile": [[0, 10**400]]}})
@example({"name": "s", "duration_s": 60, "precursors": 5, "traffic": {"profile": [[0, 1]]}})
def test_a_scenario_refuses_what_it_cannot_use(document: dict[str, Any]) -> None:
    refused_or_read(lambda: parse_scenario(toml_text(document), "fuzzed.toml"), ScenarioError)


@FUZZ
@given(st.one_of(*(variants(text) for text in scenario_texts())))
def test_a_truncated_or_garbled_scenario_is_refused(text: str) -> None:
    scenario = refused_or_read(lambda: parse_scenario(text, "fuzzed.toml"), ScenarioError)
    if scenario is not None:
        # What parses must be usable: the traffic model answers for any time.
        traffic = scenario.traffic  # type: ignore[attr-defined]
        assert math.isfinite(traffic.level_at(scenario.duration_s / 2))  # type: ignore[attr-defined]


def test_files_that_are_not_utf8_or_hold_giant_numbers_are_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    huge = tmp_path / "huge.toml"
    # tomllib raises a plain ValueError past Python's 4300-digit limit.
    huge.write_text("replicas = 1" + "0" * 5000 + "\n")
    for path in (binary, huge):
        refused_or_read(lambda: load_lab_config(path), LabConfigError)  # noqa: B023
        refused_or_read(lambda: load_scenario(str(path)), ScenarioError)  # noqa: B023
        refused_or_read(lambda: load_gateway_config(path, {}), GatewayConfigError)  # noqa: B023
        refused_or_read(lambda: load_daemon_config(path), DaemonConfigError)  # noqa: B023


# -- the daemon's config ---------------------------------------------------------

DAEMON_KEYS = (
    "store", "daemon", "targets", "host", "gpu", "logs", "playbooks", "path",
    "raw_retention_h", "rollup_retention_d", "max_size_mb", "buffer_samples", "interval_s",
    "timeout_s", "metrics", "metrics_host", "metrics_port", "name", "url", "preset", "kind",
    "replica_of", "enabled", "watch", "listen_ports", "format", "rules", "from_start",
    "pattern", "severity", "directories", "read_only", "auto", "gateway_url",
    "gateway_admin_token_env", "webhook_secret_env", "alerts", "labels", "playbook", "params",
)  # fmt: skip


def daemon_documents() -> list[dict[str, Any]]:
    return [
        tomllib.loads((ROOT / "docs" / name).read_text())
        for name in ("quell.example.toml", "quell-lab.example.toml")
    ]


@FUZZ
@given(
    st.one_of(
        toml_documents(DAEMON_KEYS),
        *(mutated(document, DAEMON_KEYS) for document in daemon_documents()),
    )
)
@example({"store": {"path": "~no-such-user-here/quell.db"}})
@example({"store": {"path": "q.db", "raw_retention_h": 10**400}})
@example({"store": {"path": "q.db"}, "playbooks": {"alerts": [{"labels": 5, "playbook": "p"}]}})
def test_the_daemon_config_refuses_what_it_cannot_use(document: dict[str, Any]) -> None:
    refused_or_read(
        lambda: parse_daemon_config(document, base=Path("/tmp"), origin="quell.toml"),
        DaemonConfigError,
    )


@FUZZ
@given(data=st.data())
def test_a_truncated_or_garbled_daemon_config_file_is_refused(
    tmp_path_factory: Any, data: st.DataObject
) -> None:
    valid = (ROOT / "docs" / "quell.example.toml").read_text()
    path = tmp_path_factory.mktemp("daemon") / "quell.toml"
    raw = data.draw(st.one_of(variants(valid).map(str.encode), st.binary(max_size=64)))
    path.write_bytes(raw)
    refused_or_read(lambda: load_daemon_config(path), DaemonConfigError)


# -- playbooks -------------------------------------------------------------------

PLAYBOOK_KEYS = (
    "name", "description", "answers", "params", "preconditions", "steps", "rollback",
    "cooldown", "max_runs_per_hour", "dangerous", "warning", "auto", "verdicts",
    "min_confidence", "conditions", "type", "default", "min", "max", "choices", "action",
    "args", "wait", "verify", "within", "for",
)  # fmt: skip


@FUZZ
@given(st.one_of(*(variants(text) for text in playbook_texts())))
def test_a_truncated_or_garbled_playbook_is_refused(text: str) -> None:
    refused_or_read(lambda: parse_playbook(text, Path("fuzzed.yaml")), PlaybookError)


# Integers too large for a float and lone surrogates (YAML reads an escaped
# emoji as two) once crashed the playbook parser; they stay in the mix.
PLAYBOOK_LEAVES = st.one_of(
    text_values,
    st.integers(),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    st.floats(),
    st.booleans(),
    st.datetimes(),
)


@FUZZ
@given(
    st.one_of(
        toml_documents(PLAYBOOK_KEYS, PLAYBOOK_LEAVES),
        *(
            mutated(yaml.safe_load(text), PLAYBOOK_KEYS, PLAYBOOK_LEAVES)
            for text in playbook_texts()
        ),
    )
)
def test_a_playbook_of_the_wrong_shape_is_refused(document: dict[str, Any]) -> None:
    # JSON is YAML; the dates and times become strings on the way. Characters
    # stay as they are: YAML reads JSON's surrogate-pair escapes as two lone
    # surrogates.
    text = json.dumps(document, default=str, ensure_ascii=False)
    refused_or_read(lambda: parse_playbook(text, Path("fuzzed.yaml")), PlaybookError)


# -- Prometheus exposition ---------------------------------------------------------

EXPOSITION_ALPHABET = st.sampled_from(
    [*'abc_:{}=",\\ \t\n#0123456789.eE+-', "Inf", "NaN", "le", "TYPE", "HELP", "_total"]
)


def exposition_texts() -> list[str]:
    return [p.read_text() for p in sorted(FIXTURES.glob("*.prom"))]


@FUZZ
@given(
    st.one_of(
        *(variants(text) for text in exposition_texts()),
        st.lists(EXPOSITION_ALPHABET, max_size=80).map("".join),
    )
)
def test_exposition_text_is_read_or_refused(text: str) -> None:
    scrape = refused_or_read(lambda: parse_exposition(text), ExpositionError)
    if scrape is not None:
        for name in scrape.names():  # type: ignore[attr-defined]
            list(scrape.values(name))  # type: ignore[attr-defined]
            scrape.histograms(name)  # type: ignore[attr-defined]


# -- log lines -----------------------------------------------------------------------

JSON_LINE_KEYS = ("time", "outcome", "status", "key", "error", "path")
nginx_stamps = st.tuples(*(st.integers(0, 9999) for _ in range(6))).map(
    lambda t: (
        f"{t[0]:04d}/{t[1] % 100:02d}/{t[2] % 100:02d} "
        f"{t[3] % 100:02d}:{t[4] % 100:02d}:{t[5] % 100:02d}"
    )
)
log_lines = st.one_of(
    st.text(max_size=120),
    st.dictionaries(st.sampled_from(JSON_LINE_KEYS), scalars.map(str) | numbers | st.none()).map(
        lambda record: json.dumps(record, default=str)
    ),
    st.tuples(
        nginx_stamps, st.sampled_from(("error", "crit", "warn", "x")), st.text(max_size=60)
    ).map(lambda t: f"{t[0]} [{t[1]}] 1#0: {t[2]}"),
    st.tuples(st.text(max_size=30), st.integers(0, 999)).map(
        lambda t: f'1.2.3.4 - - [{t[0]}] "GET / HTTP/1.1" {t[1]:03d} 0'
    ),
    st.sampled_from(("[" * 100_000, '{"a":' * 50_000, '{"time": "0001-01-01T00:00:00"}')),
)


@FUZZ
@given(log_lines, st.sampled_from(FORMATS))
@example("[" * 100_000, "auto")  # json.loads raised RecursionError
def test_a_log_line_is_classified_or_skipped_never_raised(line: str, fmt: str) -> None:
    findings = classify(line, fmt)
    for finding in findings:
        assert finding.kind and finding.severity
        assert finding.ts is None or math.isfinite(finding.ts)


@FUZZ
@given(st.dictionaries(st.sampled_from(("name", "pattern", "kind", "severity")), scalars))
def test_a_log_rule_is_built_or_refused_with_a_value_error(entry: dict[str, Any]) -> None:
    rule = refused_or_read(lambda: LogRule.from_config(entry), ValueError)
    if rule is not None:
        classify("works queue_full", "auto", [rule])  # type: ignore[list-item]


def test_an_upstream_window_too_short_to_divide_is_refused() -> None:
    # breaker_window_s = 5e-324 made every use of the upstream divide by zero.
    document = copy.deepcopy(GATEWAY_DOCUMENT)
    document["upstreams"][0]["breaker_window_s"] = 5e-324
    assert refused_or_read(lambda: parse_gateway_config(document, {}), GatewayConfigError) is None


def test_a_log_rule_with_an_impossible_repeat_is_refused() -> None:
    for pattern in ("a{4294967296}", "(" * 5000 + ")" * 5000):
        refused_or_read(lambda: LogRule.from_config({"name": "x", "pattern": pattern}), ValueError)  # noqa: B023


@settings(FUZZ, max_examples=max(10, EXAMPLES // 5))
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_a_log_file_of_random_bytes_is_read_line_by_line(
    tmp_path_factory: Any, chunks: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("logs") / "app.log"
    path.write_bytes(b"")
    collector = LogCollector(path, name="fuzzed", from_start=True)
    try:
        with path.open("ab") as handle:
            for chunk in chunks:
                handle.write(chunk)
        result = asyncio.run(collector.collect(1000.0))
        assert result.ok, result.status
        assert len(result.events) <= sum(chunk.count(b"\n") + 1 for chunk in chunks) * 3 + 3
    finally:
        collector.close()
    for chunk in chunks:
        for raw in chunk.split(b"\n"):
            line = decode_line(raw)
            assert line is None or isinstance(line, str)


def test_huge_numbers_and_lone_surrogates_are_refused_by_the_playbook_parser() -> None:
    base = (builtin_dir() / "scale-workers.yaml").read_text()
    huge = "1" + "0" * 400
    broken = (
        base.replace("cooldown: 2m", f"cooldown: {huge}"),
        base.replace("default: 2.0", f"default: {huge}"),
        base.replace("- verify: service_rate", '- verify: "\\ud800 < 1 or service_rate').replace(
            "occupancy < 0.7\n", 'occupancy < 0.7"\n', 1
        ),
    )
    assert all(text != base for text in broken)
    for text in broken:
        refused_or_read(lambda: parse_playbook(text, Path("x.yaml")), PlaybookError)  # noqa: B023
