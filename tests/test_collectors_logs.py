"""Log tailing across rotation and truncation, and lines turned into Events."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from collectors.log_lines import LogRule, classify
from collectors.logs import MAX_EVENTS_PER_KIND, LogCollector
from collectors.model import CollectResult
from collectors.tail import MAX_LINE_BYTES, FileTailer

ACCESS_FULL = (
    '{"time":"2026-11-20T14:02:11.482Z","key":"batch-jobs","priority":"sheddable",'
    '"path":"/v1/chat/completions","status":503,"outcome":"works_queue_full",'
    '"queue_wait_ms":null,"service_ms":null,"upstream":null,"prompt_tokens":null,'
    '"completion_tokens":null,"error":"works queue_full: 256 requests waiting for 16 workers"}'
)
ACCESS_OK = (
    '{"time":"2026-11-20T14:02:11.490Z","key":"web","priority":"critical",'
    '"path":"/v1/chat/completions","status":200,"outcome":"ok","queue_wait_ms":12.50,'
    '"service_ms":840.11,"upstream":"engine-0","prompt_tokens":31,"completion_tokens":64,'
    '"error":null}'
)


def append(path: Path, *lines: str | bytes) -> None:
    with path.open("ab") as handle:
        for line in lines:
            handle.write((line.encode() if isinstance(line, str) else line) + b"\n")


def test_starts_at_the_end_and_reads_only_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "old 1", "old 2")
    tailer = FileTailer(log)
    assert tailer.poll() == []
    append(log, "new 1")
    assert tailer.poll() == [b"new 1"]
    assert tailer.poll() == []


def test_from_start_reads_everything(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "a", "b")
    assert FileTailer(log, from_start=True).poll() == [b"a", b"b"]


def test_a_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    tailer = FileTailer(log)
    with log.open("ab") as handle:
        handle.write(b"half a li")
    assert tailer.poll() == []
    append(log, "ne")
    assert tailer.poll() == [b"half a line"]


def test_rotation_by_rename_reads_the_old_files_tail_then_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    append(log, "before")
    tailer = FileTailer(log)
    writer = log.open("ab")
    writer.write(b"last line of the old file\n")
    writer.flush()
    log.rename(tmp_path / "access.log.1")
    # The writer has not reopened yet: its lines still land in the old file.
    writer.write(b"written after the rename\n")
    writer.flush()
    assert tailer.poll() == [b"last line of the old file", b"written after the rename"]
    writer.close()
    append(log, "first line of the new file", "second")
    assert tailer.poll() == [b"first line of the new file", b"second"]
    append(log, "third")
    assert tailer.poll() == [b"third"]


def test_truncation_starts_over_from_the_top(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "x" * 200)
    tailer = FileTailer(log)
    append(log, "one more")
    assert tailer.poll() == [b"one more"]
    with log.open("wb") as handle:  # copytruncate, or `> app.log`
        handle.write(b"after truncation\n")
    assert tailer.poll() == [b"after truncation"]


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "late.log"
    tailer = FileTailer(log)
    assert tailer.poll() == []
    append(log, "born")
    assert tailer.poll() == [b"born"]


def test_huge_and_binary_lines_are_skipped_and_counted_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b"")
    collector = LogCollector(log, name="gw")

    async def scenario() -> tuple[CollectResult, CollectResult]:
        first = await collector.collect(100.0)
        append(log, b"x" * (MAX_LINE_BYTES + 10), b"\x00\x01\x02binary\xff", ACCESS_FULL)
        append(log, b"y" * (3 * MAX_LINE_BYTES))  # longer than one read
        append(log, ACCESS_FULL)
        return first, await collector.collect(101.0)

    first, second = asyncio.run(scenario())
    assert first.ok and second.ok, second.status
    assert [e.kind for e in second.events] == ["queue_full", "queue_full"]
    skipped = {s.series: s.value for s in second.samples if s.series == "log_lines_skipped_total"}
    assert skipped == {"log_lines_skipped_total": 3}
    assert collector.skipped == 3


def test_access_log_queue_full_lines_become_events_and_a_rate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    collector = LogCollector(log, name="gateway-access")

    async def scenario() -> tuple[CollectResult, CollectResult]:
        await collector.collect(100.0)
        append(log, ACCESS_OK, ACCESS_FULL, ACCESS_FULL, ACCESS_OK)
        busy = await collector.collect(102.0)
        quiet = await collector.collect(104.0)
        return busy, quiet

    busy, quiet = asyncio.run(scenario())
    assert [e.kind for e in busy.events] == ["queue_full", "queue_full"]
    event = busy.events[0]
    assert event.source == "gateway-access"
    assert event.severity == "warning"
    assert "works queue_full" in event.text
    assert event.ts == pytest.approx(1795183331.482)  # the line's own time
    rates = {(s.series, s.label("kind")): s.value for s in busy.samples}
    assert rates[("log_events_rate", "queue_full")] == 1.0  # 2 lines in 2 s
    assert rates[("log_lines_rate", "")] == 2.0
    # A burst that ended reads 0, not silence.
    assert {s.label("kind"): s.value for s in quiet.samples if s.series == "log_events_rate"} == {
        "queue_full": 0.0
    }


def test_only_the_first_lines_of_a_kind_become_events_but_the_rate_counts_all(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    collector = LogCollector(log)

    async def scenario() -> CollectResult:
        await collector.collect(10.0)
        append(log, *([ACCESS_FULL] * 500))
        return await collector.collect(11.0)

    result = asyncio.run(scenario())
    assert len(result.events) == MAX_EVENTS_PER_KIND
    assert {s.label("kind"): s.value for s in result.samples if s.series == "log_events_rate"} == {
        "queue_full": 500.0
    }


def test_nginx_error_log_lines(fixtures: Path) -> None:
    kinds = [
        [(f.kind, f.severity) for f in classify(line)]
        for line in (fixtures / "nginx_error.log").read_text().splitlines()
    ]
    assert kinds == [
        [("worker_connections", "critical")],
        [("worker_connections", "warning")],
        [("limit_req", "error")],
        [("limit_conn", "error")],
        [("upstream_timeout", "error")],
        [("no_live_upstreams", "error")],
    ]


def test_nginx_access_log_combined_format() -> None:
    line = (
        '10.0.3.7 - - [20/Nov/2026:14:02:12 +0000] "POST /v1/chat/completions HTTP/1.1" {} 197 '
        '"-" "openai-python/1.40"'
    )
    assert [f.kind for f in classify(line.format(503))] == ["http_5xx"]
    assert [f.kind for f in classify(line.format(429))] == ["http_429"]
    assert classify(line.format(200)) == []
    assert classify(line.format(503))[0].ts == pytest.approx(1795183332.0)


def test_configured_rules_match_any_format() -> None:
    rule = LogRule.from_config(
        {"name": "oom", "pattern": r"CUDA out of memory", "kind": "gpu_oom", "severity": "critical"}
    )
    findings = classify(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", rules=[rule]
    )
    assert [(f.kind, f.severity) for f in findings] == [("gpu_oom", "critical")]
    # Plain text that says the words is a queue_full too.
    assert [f.kind for f in classify("upstream said: works queue_full")] == ["queue_full"]
    for bad in (
        {"name": "x"},
        {"pattern": "y"},
        {"name": "x", "pattern": "("},
        {"name": "x", "pattern": "y", "severity": "loud"},
    ):
        with pytest.raises(ValueError):
            LogRule.from_config(bad)


def test_unreadable_and_missing_files_are_statuses(tmp_path: Path) -> None:
    missing = asyncio.run(LogCollector(tmp_path / "nope.log").collect(1.0))
    assert missing.status.startswith("error: ") and "does not exist" in missing.status
    if os.geteuid() == 0:
        return  # root reads anything; the permission case cannot be seen
    locked = tmp_path / "locked.log"
    locked.write_text("x\n")
    locked.chmod(0)
    result = asyncio.run(LogCollector(locked).collect(1.0))
    assert result.status.startswith("error: cannot read")
