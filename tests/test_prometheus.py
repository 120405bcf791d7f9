"""Beyond one host: real Prometheus and Alertmanager servers in front of the lab.

Prometheus scrapes the lab's gateway, its engines and a `quell collect`
daemon every second; `quell diagnose --source prometheus=...` must give the
verdict the local scrape gives during a producer surge; a shipped rule fires,
Alertmanager posts to the daemon's webhook, and the mapped playbook runs once
and is in the audit chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.lab.capacity import lab_capacity_rps
from inference.lab.scenario import Scenario, lab_traffic
from inference.lab.traffic import Generator, Target
from playbooks.journal import Journal
from tests.lab_helpers import lab_pids, lab_state, quell, wait_gone
from tests.servers import quell_command, running

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "quell-rules.yml"
PROGRAMS = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager",
            "promtool": "promtool"}  # fmt: skip
MISSING = [name for name, program in PROGRAMS.items() if shutil.which(program) is None]
REQUIRED = os.environ.get("QUELL_REQUIRE_SYSTEM_DEPS") == "1"
SECRET = "alertmanager-to-quell-secret"

pytestmark = pytest.mark.skipif(
    bool(MISSING) and not REQUIRED,
    reason=f"needs the Debian packages prometheus and prometheus-alertmanager "
    f"(missing: {', '.join(MISSING)})",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_shipped_rules_pass_promtool() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout
    example = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    done = subprocess.run(["amtool", "check-config", str(example)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _server(
    argv: list[str], ready_url: str, log: Path, timeout: float = 30
) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{argv[0]} exited:\n{log.read_text()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{argv[0]} not ready:\n{log.read_text()}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fleet")
    state_dir = root / "state"
    assert quell(state_dir, "lab", "up", "--detach").returncode == 0
    state = lab_state(state_dir)
    gateway = state["gateway"]
    engines = [e["url"].removeprefix("http://") for e in state["engines"]]
    store = root / "quell.db"
    config = root / "collect.toml"
    lines = [
        "[store]", f'path = "{store}"',
        "[daemon]", "interval_s = 1.0", "metrics_port = 0",
        "[host]", "enabled = false", "[gpu]", "enabled = false",
        "[[targets]]", 'name = "gateway"', f'url = "{gateway["url"]}/metrics"',
        'preset = "quell-gateway"',
    ]  # fmt: skip
    for engine in state["engines"]:
        lines += ["[[targets]]", f'name = "{engine["name"]}"', f'url = "{engine["url"]}/metrics"',
                  'preset = "vllm"', 'replica_of = "gateway"']  # fmt: skip
    lines += [
        "[playbooks]", "auto = false", f'gateway_url = "{gateway["url"]}"',
        "[[playbooks.alerts]]", 'labels = { alertname = "QuellProducerSurge" }',
        'playbook = "tighten-limits"',
    ]  # fmt: skip
    config.write_text("\n".join(lines) + "\n")
    env = {"QUELL_STATE_DIR": str(state_dir), "QUELL_WEBHOOK_SECRET": SECRET,
           "QUELL_GATEWAY_ADMIN_TOKEN": gateway["admin_token"]}  # fmt: skip
    am_port, prom_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with running(quell_command("collect", "--config", str(config)), env) as daemon:
        try:
            (root / "secret").write_text(SECRET)
            (root / "am.yml").write_text(json.dumps({
                "route": {"receiver": "quell", "group_by": ["alertname", "target"],
                          "group_wait": "1s", "group_interval": "2s", "repeat_interval": "5s"},
                "receivers": [{"name": "quell", "webhook_configs": [{
                    "url": f"{daemon.url}/alertmanager", "send_resolved": False,
                    "http_config": {"authorization": {"type": "Bearer",
                                                      "credentials_file": str(root / "secret")}},
                }]}],
            }))  # fmt: skip
            processes.append(_server(
                ["prometheus-alertmanager", f"--config.file={root / 'am.yml'}",
                 f"--storage.path={root / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                 "--cluster.listen-address="],
                f"http://127.0.0.1:{am_port}/-/ready", root / "alertmanager.log",
            ))  # fmt: skip
            shutil.copy(RULES, root / "quell-rules.yml")
            (root / "prometheus.yml").write_text(json.dumps({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(root / "quell-rules.yml")],
                "alerting": {"alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [
                    {"job_name": "gateway",
                     "static_configs": [{"targets": [gateway["url"].removeprefix("http://")]}]},
                    {"job_name": "engines", "static_configs": [{"targets": engines}]},
                    {"job_name": "quell",
                     "static_configs": [{"targets": [daemon.url.removeprefix("http://")]}]},
                ],
            }))  # fmt: skip
            prometheus = f"http://127.0.0.1:{prom_port}"
            processes.append(_server(
                ["prometheus", f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                f"{prometheus}/-/ready", root / "prometheus.log",
            ))  # fmt: skip
            yield {"state": state, "state_dir": state_dir, "prometheus": prometheus,
                   "store": store, "daemon": daemon, "root": root}  # fmt: skip
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            quell(state_dir, "lab", "down")
            assert wait_gone(lab_pids(state)) == []


def targets_up(prometheus: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]
        health = [t["health"] for t in targets["activeTargets"]]
        if len(health) == 4 and set(health) == {"up"}:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus targets not up: {targets}")


def surge() -> Scenario:
    return lab_traffic("surge", [(0, 0.6), (15, 0.6), (15, 2.0)], 55, cause="producer_surge",
                       onset_s=15)  # fmt: skip


def test_prometheus_gives_the_local_verdict_and_an_alert_runs_its_playbook_once(
    fleet: dict[str, Any],
) -> None:
    state = fleet["state"]
    prometheus = fleet["prometheus"]
    targets_up(prometheus)
    scenario = surge()
    traffic = scenario.traffic
    capacity = lab_capacity_rps(state, traffic.prompt_tokens.mean(), traffic.max_tokens.mean())
    target = Target(state["gateway"]["url"], {k["name"]: k["key"] for k in state["keys"]})
    generator = Generator(scenario, target, capacity, seed=3)
    generator.prepare()
    env = {**os.environ, "QUELL_STATE_DIR": str(fleet["state_dir"])}

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        sending = asyncio.create_task(generator.run())
        try:
            # Both start before the surge so each has a baseline to compare it with.
            await asyncio.sleep(2)
            via_prometheus = await asyncio.create_subprocess_exec(
                *quell_command("diagnose", "--json", "--window", "25",
                               "--source", f"prometheus={prometheus}"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            local = await asyncio.create_subprocess_exec(
                *quell_command("diagnose", "--json", "--window", "25"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            remote_out, remote_err = await via_prometheus.communicate()
            local_out, local_err = await local.communicate()
            assert via_prometheus.returncode == 1, remote_err.decode()
            assert local.returncode == 1, local_err.decode()
            return json.loads(remote_out), json.loads(local_out)
        finally:
            await asyncio.sleep(max(0.0, 50 - (time.monotonic() - started)))
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)

    started = time.monotonic()
    remote, local = asyncio.run(go())
    assert remote["verdicts"][0]["cause"] == local["verdicts"][0]["cause"] == "producer_surge"
    assert set(remote["verdicts"][0]["evidence"]) >= {"offered_rate", "service_rate", "depth"}

    deadline = time.monotonic() + 60
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        journal = Journal(fleet["store"], read_only=True)
        runs = [r for r in journal.runs() if r["trigger"].startswith("alert: QuellProducerSurge")]
        problems = journal.verify_chain()
        journal.close()
        if runs and runs[0]["status"] != "running":
            break
        time.sleep(0.5)
    output = "".join(fleet["daemon"].output)
    # The daemon's verdicts and alerts without the scrape lines, whole, for when it fails.
    said = "\n".join(line for line in output.splitlines() if "GET /metrics" not in line)
    assert len(runs) == 1, f"{runs}\n{said}"
    assert runs[0]["playbook"] == "tighten-limits"
    assert runs[0]["status"] == "applied", f"{runs[0]}\n{said}"
    assert problems == []
    assert SECRET not in output


def test_the_console_source_reads_the_queue_and_each_replica_back(
    fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from collectors.config import load_config
    from collectors.daemon import build_sources
    from collectors.http import make_client
    from collectors.watch import signals_of
    from console.commands.console import prometheus_config

    monkeypatch.setenv("QUELL_STATE_DIR", str(tmp_path))
    targets_up(fleet["prometheus"])
    config = load_config(prometheus_config(f"prometheus={fleet['prometheus']}",
                                           '{job="gateway"}', '{job="engines"}'))  # fmt: skip
    assert [(t.name, t.kind, t.replica_of) for t in config.targets] == [
        ("gateway", "prometheus", None),
        ("replica-0", "prometheus", "gateway"),
        ("replica-1", "prometheus", "gateway"),
    ]

    async def two_ticks() -> dict[str, dict[str, float]]:
        async with make_client() as client:
            sources = build_sources(config, client)
            seen: dict[str, dict[str, float]] = {}
            for _ in range(3):  # rates need two scrapes Prometheus made
                for source in sources:
                    result = await source.collector.collect(time.time())
                    seen[source.name] = signals_of(result.samples)
                await asyncio.sleep(1.2)
            return seen

    seen = asyncio.run(two_ticks())
    assert {"depth", "capacity", "offered_rate"} <= set(seen["gateway"]), seen["gateway"]
    assert seen["gateway"]["capacity"] == 128
    assert "running" in seen["replica-0"] and "running" in seen["replica-1"]
