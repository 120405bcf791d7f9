"""`quell collect` as a real process against a real lab: cadence, isolation, signals, crashes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone
from tests.servers import RunningServer, quell_command, running

INTERVAL = 0.25


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state_dir = tmp_path_factory.mktemp("lab")
    result = quell(state_dir, "lab", "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    state = lab_state(state_dir)
    yield state_dir, state
    quell(state_dir, "lab", "down")
    assert wait_gone(lab_pids(state)) == []


def urls(state: dict[str, Any]) -> dict[str, str]:
    found = {"gateway": state["gateway"]["url"] + "/metrics"}
    found.update({e["name"]: e["url"] + "/metrics" for e in state["engines"]})
    return found


def config_text(
    db: Path,
    targets: dict[str, str],
    *,
    interval: float = INTERVAL,
    timeout: float | None = None,
    host: bool = False,
    store: str = "",
) -> str:
    lines = [
        "[store]", f'path = "{db}"', store,
        "[daemon]", f"interval_s = {interval}", "metrics_port = 0",
        *([f"timeout_s = {timeout}"] if timeout else []),
        "[host]", f"enabled = {'true' if host else 'false'}",
        "[gpu]", "enabled = false",
    ]  # fmt: skip
    for name, url in targets.items():
        lines += ["[[targets]]", f'name = "{name}"', f'url = "{url}"']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def daemon(*args: str, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    with running(quell_command("collect", *args), env) as server:
        yield server


def status(server: RunningServer) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(server.url + "/status", timeout=5).json()
    return answer


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def rows(db: Path, sql: str, *params: Any) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return connection.execute(sql, params).fetchall()


# Which source each sample came from: its target label, a log's source
# label, or "host" for what the host collector reports.
SOURCE_SQL = """
SELECT samples.ts, coalesce(
    json_extract(series.labels_json, '$.target'),
    json_extract(series.labels_json, '$.source'),
    CASE WHEN series.name GLOB 'host_*' OR series.name GLOB 'process_*' THEN 'host' END,
    '?'), count(*)
FROM samples JOIN series ON series.id = samples.series_id
GROUP BY 1, 2 ORDER BY 1
"""


def sources_per_tick(db: Path) -> dict[float, set[str]]:
    ticks: dict[float, set[str]] = {}
    for ts, source, _ in rows(db, SOURCE_SQL):
        ticks.setdefault(ts / 1000, set()).add(source)
    return ticks


def logged(server: RunningServer, text: str) -> bool:
    return any(text in line for line in server.output)


def test_without_a_config_it_collects_the_lab_every_tick_and_follows_its_replicas(
    lab: tuple[Path, dict[str, Any]],
) -> None:
    state_dir, state = lab
    db = Path(state["lab_dir"]) / "quell.db"
    with daemon(env={"QUELL_STATE_DIR": str(state_dir)}) as server:
        wait_for(lambda: status(server)["ticks"] >= 3, what="three ticks")
        assert logged(server, "target gateway: http") and logged(server, "target engine-1: http")
        wanted = {"gateway", "engine-0", "engine-1", "host", "gateway-access"}
        ticks = sources_per_tick(db)
        assert len(ticks) >= 3
        for ts, seen in ticks.items():
            assert wanted <= seen, f"tick {ts}: only {sorted(seen)}"
        # Ticks fall on whole seconds (the lab's interval), one second apart.
        stamps = sorted(ticks)[1:]
        assert all(ts == int(ts) for ts in stamps), stamps
        assert all(b - a == 1.0 for a, b in itertools.pairwise(stamps)), stamps
        now = status(server)
        assert now["store"]["path"] == str(db) and now["store"]["status"] == "ok"
        assert now["targets"]["engine-0"]["up"] is True
        # A replica added to the lab is collected without a restart.
        assert quell(state_dir, "lab", "scale", "3").returncode == 0
        try:
            wait_for(lambda: logged(server, "target engine-2 added"), what="engine-2 added")
            wait_for(
                lambda: any("engine-2" in seen for seen in sources_per_tick(db).values()),
                what="engine-2 samples",
            )
        finally:
            assert quell(state_dir, "lab", "scale", "2").returncode == 0
        wait_for(lambda: logged(server, "target engine-2 removed"), what="engine-2 removed")


def test_metrics_reexport_the_series_and_the_daemons_health(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    config = tmp_path / "quell.toml"
    config.write_text(config_text(tmp_path / "q.db", urls(state), host=True))
    with daemon("--config", str(config)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        wait_for(lambda: status(server)["ticks"] >= 2, what="two ticks")
        text = httpx.get(server.url + "/metrics", timeout=5).text
    assert re.search(r'^quell_capacity\{target="gateway"\} 128\.0$', text, re.M), text[:2000]
    assert re.search(r'^quell_workers\{engine="[^"]+",.*target="engine-0"\} \d', text, re.M)
    assert re.search(r'^quell_host_load1\{target="host"\} ', text, re.M)
    for target in ("gateway", "engine-0", "engine-1", "host"):
        assert f'quell_daemon_target_up{{target="{target}"}} 1.0' in text
        assert f'quell_daemon_scrape_errors_total{{target="{target}"}} 0.0' in text
        assert f'quell_daemon_scrape_seconds{{target="{target}"}} ' in text
    assert "quell_daemon_tick_seconds_bucket{le=" in text
    written = re.search(r"^quell_daemon_samples_written_total (\S+)$", text, re.M)
    assert written and float(written.group(1)) > 100
    assert "quell_daemon_buffered_samples 0.0" in text
    assert "quell_daemon_store_errors_total 0.0" in text


def test_sigterm_stops_within_two_seconds_and_loses_nothing(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    db = tmp_path / "q.db"
    config = tmp_path / "quell.toml"
    config.write_text(config_text(db, urls(state), interval=0.5, host=True))
    with daemon("--config", str(config)) as server:
        wait_for(lambda: status(server)["ticks"] >= 4, what="four ticks")
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(5)
        took = time.monotonic() - sent
        wait_for(lambda: logged(server, "stopped after"), timeout=2)
    assert code == 0
    assert took < 2.0, f"took {took:.2f} s to stop"
    line = next(line for line in server.output if "stopped after" in line)
    found = re.search(r"stopped after (\d+) ticks: (\d+) samples written, (\d+) lost", line)
    assert found, line
    ticks, written, lost = map(int, found.groups())
    assert lost == 0
    assert rows(db, "SELECT count(*) FROM samples") == [(written,)]
    # Every tick is in the file (the host source always reports something).
    assert rows(db, "SELECT count(DISTINCT ts) FROM samples") == [(ticks,)]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def test_a_target_that_never_answers_costs_the_others_nothing(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    db = tmp_path / "q.db"
    config = tmp_path / "quell.toml"
    with silent_server() as silent:
        targets = {"engine-0": urls(state)["engine-0"], "silent": silent}
        config.write_text(config_text(db, targets, interval=0.5, timeout=0.3))
        with daemon("--config", str(config)) as server:
            started = time.monotonic()
            wait_for(lambda: status(server)["ticks"] >= 6, what="six ticks")
            elapsed = time.monotonic() - started
            now = status(server)
            text = httpx.get(server.url + "/metrics", timeout=5).text
    silent_state, engine = now["targets"]["silent"], now["targets"]["engine-0"]
    assert silent_state["up"] is False and silent_state["status"] == "error: no answer within 0.3 s"
    assert silent_state["errors"] >= 5
    assert engine["up"] is True and engine["errors"] == 0
    assert elapsed < 6 * 0.5 + 1.0, "the silent target slowed the ticks down"
    # The healthy target was written on every tick, on the half-second grid.
    stamps = sorted(ts for ts, seen in sources_per_tick(db).items() if "engine-0" in seen)
    assert len(stamps) >= 6
    gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
    assert gaps and max(gaps) <= 0.5 + 1e-6, gaps
    errors = re.search(r'^quell_daemon_scrape_errors_total\{target="silent"\} (\S+)$', text, re.M)
    assert errors and float(errors.group(1)) >= 5
    assert 'quell_daemon_target_up{target="silent"} 0.0' in text
    assert 'quell_daemon_scrape_seconds{target="silent"} 0.3' in text


def test_sighup_adds_and_removes_targets_and_keeps_running_on_a_bad_config(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    db = tmp_path / "q.db"
    config = tmp_path / "quell.toml"
    config.write_text(config_text(db, {"engine-0": urls(state)["engine-0"]}))
    with daemon("--config", str(config)) as server:
        wait_for(lambda: status(server)["ticks"] >= 2, what="two ticks")
        config.write_text(config_text(db, {"engine-1": urls(state)["engine-1"]}))
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: logged(server, "target engine-1 added"), what="engine-1 added")
        assert logged(server, "target engine-0 removed")
        wait_for(lambda: set(status(server)["targets"]) == {"engine-1"}, what="new targets")
        reloaded = status(server)["last_tick"]
        wait_for(lambda: status(server)["last_tick"] > reloaded + 2 * INTERVAL, what="ticks")
        after = sources_per_tick(db)
        assert all("engine-0" not in seen for ts, seen in after.items() if ts > reloaded)
        assert any("engine-1" in seen for ts, seen in after.items() if ts > reloaded)
        assert 'target="engine-0"' not in httpx.get(server.url + "/metrics", timeout=5).text

        config.write_text(config_text(db, {}) + "[daemon]\nintervall = 1\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: logged(server, "config not reloaded"), what="the refusal")
        refusal = next(line for line in server.output if "config not reloaded" in line)
        assert "the running config stays" in refusal
        ticks = status(server)["ticks"]
        wait_for(lambda: status(server)["ticks"] >= ticks + 2, what="ticks after the refusal")
        assert set(status(server)["targets"]) == {"engine-1"}
        assert server.process.poll() is None


def test_kill_9_loses_at_most_the_last_tick_and_leaves_the_file_intact(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    db = tmp_path / "q.db"
    config = tmp_path / "quell.toml"
    config.write_text(config_text(db, urls(state), interval=0.1, timeout=0.08, host=True))
    with daemon("--config", str(config)) as server:
        wait_for(lambda: status(server)["ticks"] >= 15, what="busy ticks")
        before = status(server)
        os.kill(server.process.pid, signal.SIGKILL)
        killed_at = time.time()
        server.process.wait(5)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    # Every tick reported written before the kill is in the file...
    last_reported = round(before["store"]["newest_tick_written"] * 1000)
    assert rows(db, "SELECT count(*) > 0 FROM samples WHERE ts = ?", last_reported) == [(1,)]
    # ...and the file reaches to within about one tick of the kill.
    (newest,) = rows(db, "SELECT max(ts) FROM samples")[0]
    assert killed_at - newest / 1000 < 0.1 * 3 + 0.2, killed_at - newest / 1000
    assert rows(db, "SELECT count(*) FROM samples")[0][0] >= before["store"]["samples_written"]


def test_a_full_store_buffers_in_memory_until_it_takes_writes_again(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    db = tmp_path / "q.db"
    config = tmp_path / "quell.toml"
    targets = {"gateway": urls(state)["gateway"], "engine-0": urls(state)["engine-0"]}
    # A size cap below what the fresh file holds: SQLite answers "database or
    # disk is full" as soon as a tick needs a new page, as on a full disk.
    config.write_text(config_text(db, targets, store="max_size_mb = 0.001"))
    with daemon("--config", str(config)) as server:
        wait_for(
            lambda: status(server)["store"]["status"].startswith("error: database or disk is full"),
            what="the store to fill",
        )
        wait_for(lambda: status(server)["store"]["buffered_samples"] > 500, what="buffering")
        assert logged(server, "cannot write the store (database or disk is full); keeping")
        text = httpx.get(server.url + "/metrics", timeout=5).text
        buffered = re.search(r"^quell_daemon_buffered_samples (\S+)$", text, re.M)
        assert buffered and float(buffered.group(1)) > 0
        assert not re.search(r"^quell_daemon_store_errors_total 0\.0$", text, re.M)

        config.write_text(config_text(db, targets))
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status(server)["store"]["status"] == "ok", what="the store to recover")
        wait_for(lambda: status(server)["store"]["buffered_samples"] == 0, what="catching up")
        assert logged(server, "store writable again")
        now = status(server)
    # Every sample made it into the file, those of the full spell included.
    assert now["store"]["dropped_samples"] == 0
    assert rows(db, "SELECT count(*) FROM samples")[0][0] == now["store"]["samples_written"]
    assert now["store"]["samples_written"] > 500


def test_status_is_json_and_other_paths_are_404(
    lab: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = lab
    config = tmp_path / "quell.toml"
    config.write_text(config_text(tmp_path / "q.db", {"engine-0": urls(state)["engine-0"]}))
    with daemon("--config", str(config)) as server:
        answer = httpx.get(server.url + "/status", timeout=5)
        assert answer.headers["content-type"] == "application/json"
        assert json.loads(answer.text)["config"] == str(config)
        assert httpx.get(server.url + "/nope", timeout=5).status_code == 404
