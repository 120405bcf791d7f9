"""No key or token in any log line, state file, store or metric label.

An engine, a gateway in front of it and a daemon watching both (the
gateway's access log included) run on loopback. Every kind of caller takes
its turn: clients with their keys, with a wrong key and with none, a client
key on the admin API, the admin token changing settings, the engine's admin
token injecting a fault, Alertmanager with the right and a wrong secret.
Alertmanager's alert starts a playbook that the daemon runs against the
gateway with the admin token. Then everything each process wrote (output,
access log, state file, store, /metrics, /status) is searched for every
secret in play.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from playbooks.journal import Journal
from tests.gateway_helpers import ADMIN_TOKEN, HELLO, KEYS, gateway, gateway_config
from tests.servers import FAST_ENGINE, RunningServer, engine, quell_command, running

ENGINE_ADMIN = "engine-admin-secret-9f8e7d"
ENGINE_KEY = "sk-engine-upstream-5a4b3c"
WEBHOOK_SECRET = "webhook-secret-1a2b3c"
# A near miss of a real key, as a client with a typo sends it.
WRONG_KEY = KEYS["team-a"][0] + "x"
SECRETS = {
    **{f"client key {name}": secret for name, (secret, _) in KEYS.items()},
    "gateway admin token": ADMIN_TOKEN,
    "engine admin token": ENGINE_ADMIN,
    "engine client key": ENGINE_KEY,
    "webhook secret": WEBHOOK_SECRET,
    "a wrong client key": WRONG_KEY,
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def exercise_engine(url: str) -> None:
    chat = {"model": "quell-mini", "messages": HELLO, "max_tokens": 4}
    assert httpx.post(f"{url}/v1/chat/completions", json=chat).status_code == 401
    assert httpx.get(f"{url}/admin/state", headers=bearer(ENGINE_KEY)).status_code == 401
    admin = bearer(ENGINE_ADMIN)
    assert httpx.post(f"{url}/admin/faults", json={"slowdown": 2}, headers=admin).is_success
    assert httpx.delete(f"{url}/admin/faults", headers=admin).is_success


def exercise_gateway(url: str) -> None:
    chat = {"model": "quell-mini", "messages": HELLO, "max_tokens": 4}
    for name in KEYS:
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=bearer(KEYS[name][0]))
        assert answer.status_code == 200, answer.text
    streamed = {**chat, "stream": True}
    assert httpx.post(
        f"{url}/v1/chat/completions", json=streamed, headers=bearer(KEYS["pager"][0])
    ).is_success
    assert httpx.get(f"{url}/v1/models", headers=bearer(KEYS["batch"][0])).is_success
    assert (
        httpx.post(f"{url}/v1/chat/completions", json=chat, headers=bearer(WRONG_KEY)).status_code
        == 401
    )
    assert httpx.post(f"{url}/v1/chat/completions", json=chat).status_code == 401
    assert httpx.get(f"{url}/admin/state", headers=bearer(KEYS["team-a"][0])).status_code == 403
    assert httpx.get(f"{url}/admin/state", headers=bearer(WRONG_KEY)).status_code == 401
    admin = bearer(ADMIN_TOKEN)
    for path, body in (
        ("queue", {"workers": 8}),
        ("limits", {"key": "team-a", "requests_per_second": 50}),
        ("shed", {"classes": ["sheddable"]}),
        ("shed", {"classes": []}),
        ("cache", {"enabled": True}),
        ("upstreams/e0/drain", None),
        ("upstreams/e0/undrain", None),
    ):
        answer = httpx.post(f"{url}/admin/{path}", json=body, headers=admin)
        assert answer.status_code == 200, answer.text


def exercise_webhook(url: str) -> None:
    alert = {
        "version": "4",
        "status": "firing",
        "alerts": [{"labels": {"alertname": "QuellQueueFilling"}, "fingerprint": "f00d"}],
    }
    hook = f"{url}/alertmanager"
    assert httpx.post(hook, json=alert, headers=bearer(WEBHOOK_SECRET)).status_code == 202
    assert httpx.post(hook, json=alert, headers=bearer(WRONG_KEY)).status_code == 401
    assert httpx.post(hook, content=b"{", headers=bearer(WEBHOOK_SECRET)).status_code == 400


def wait_for_run(db: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        journal = Journal(db, read_only=True)
        try:
            done = [r["status"] for r in journal.runs() if r["status"] != "running"]
        finally:
            journal.close()
        if done:
            return str(done[0])
        time.sleep(0.2)
    return "not finished"


def leaks(where: str, text: str) -> list[str]:
    return [f"{what} in {where}" for what, secret in SECRETS.items() if secret in text]


def test_no_key_or_token_is_written_anywhere(tmp_path: Path) -> None:
    engine_env = {"QUELL_ENGINE_API_KEY": ENGINE_KEY}
    written: dict[str, str] = {}
    with engine(*FAST_ENGINE, admin_token=ENGINE_ADMIN, env=engine_env) as upstream:
        config = gateway_config(
            tmp_path,
            {"e0": upstream.url},
            upstream_key_env="ENGINE_KEY",
            server={"state_file": "state.json"},
        )
        with gateway(config, env={"ENGINE_KEY": ENGINE_KEY}) as front:
            daemon_config = tmp_path / "quell.toml"
            daemon_config.write_text(
                f'[store]\npath = "{tmp_path / "quell.db"}"\n'
                "[daemon]\ninterval_s = 0.2\nmetrics_port = 0\n"
                "[host]\nenabled = false\n[gpu]\nenabled = false\n"
                f'[[targets]]\nname = "gateway"\nurl = "{front.url}/metrics"\n'
                f'[[targets]]\nname = "e0"\nurl = "{upstream.url}/metrics"\n'
                'replica_of = "gateway"\n'
                f'[[logs]]\nname = "access"\npath = "{tmp_path / "access.log"}"\n'
                'format = "json"\nfrom_start = true\n'
                f'[playbooks]\ngateway_url = "{front.url}"\n'
                '[[playbooks.alerts]]\nplaybook = "enable-cache"\n'
                'labels = { alertname = "QuellQueueFilling" }\n'
            )
            daemon_env = {
                "QUELL_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "QUELL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            }
            with running(
                quell_command("collect", "--config", str(daemon_config)), daemon_env
            ) as daemon:
                exercise_engine(upstream.url)
                exercise_gateway(front.url)
                exercise_webhook(daemon.url)
                # The alert's playbook, run by the daemon with the admin token.
                assert wait_for_run(tmp_path / "quell.db") == "applied", "".join(daemon.output)
                servers: dict[str, RunningServer] = {
                    "engine": upstream, "gateway": front, "daemon": daemon,
                }  # fmt: skip
                for name, server in servers.items():
                    written[f"the {name}'s /metrics"] = httpx.get(f"{server.url}/metrics").text
                written["the daemon's /status"] = httpx.get(f"{daemon.url}/status").text
            written["the daemon's output"] = "".join(daemon.output)
        written["the gateway's output"] = "".join(front.output)
    written["the engine's output"] = "".join(upstream.output)
    for path in sorted(tmp_path.iterdir()):
        if path.name.startswith(("access.log", "state.json", "quell.db")):
            written[path.name] = path.read_bytes().decode("utf-8", "replace")

    # What was searched is what was written: the callers and changes are there.
    access = written["access.log"]
    assert all(f'"key":"{name}"' in access for name in KEYS), access
    assert '"status":401' in access
    assert "workers" in written["the gateway's output"]
    assert "slowdown" in written["the engine's output"]
    assert "f00d" in written["quell.db"] and "enable-cache" in written["quell.db"]
    assert 'quell_log_lines_rate{source="access"' in written["the daemon's /metrics"]
    found = [leak for where, text in written.items() for leak in leaks(where, text)]
    assert not found, found
