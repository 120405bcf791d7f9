"""`quell collect`'s config: every key checked, one line naming it, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collectors.config import ConfigError, lab_config, load_config
from tests.servers import quell_command


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quell.toml"
    path.write_text(textwrap.dedent(text))
    return path


def collect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        quell_command("collect", *args),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_a_full_config_reads_as_written(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [store]
            path = "data/quell.db"
            raw_retention_h = 12
            rollup_retention_d = 7
            [daemon]
            interval_s = 2
            metrics_port = 9469
            [[targets]]
            name = "vllm"
            url = "http://127.0.0.1:8000/metrics"
            preset = "vllm"
            [[targets]]
            name = "celery"
            url = "redis://127.0.0.1:6379/0?queue=celery"
            kind = "redis"
            [host]
            watch = ["nginx", 1234]
            [gpu]
            enabled = false
            [[logs]]
            path = "/var/log/nginx/error.log"
            format = "nginx_error"
            rules = [{name = "oom", pattern = "out of memory", severity = "critical"}]
            """,
        )
    )
    # A relative store path starts at the config file's folder.
    assert config.store.path == tmp_path / "data" / "quell.db"
    assert (config.store.raw_retention_h, config.store.rollup_retention_d) == (12, 7)
    assert (config.daemon.interval_s, config.daemon.timeout_s) == (2, 1.6)
    assert [t.name for t in config.targets] == ["vllm", "celery"]
    assert config.host.watch == ("nginx", 1234)
    assert config.source_names() == ["vllm", "celery", "host", "/var/log/nginx/error.log"]
    assert config.logs[0].rules[0].kind == "oom"


STORE = "[store]\npath = 'q.db'\n"
BAD = [
    (STORE + "[daemon]\nintervall = 1", "daemon.intervall: unknown key"),
    (STORE + "[daemon]\ninterval_s = 'fast'", "daemon.interval_s: must be a number"),
    (STORE + "[daemon]\ninterval_s = 1\ntimeout_s = 1", "daemon.timeout_s: must be less"),
    ("[daemon]\ninterval_s = 1", "store.path: is required"),
    (STORE + "raw_retention_h = -1", "store.raw_retention_h: must be above 0"),
    (STORE + "[[targets]]\nurl = 'http://x:1/'", "targets[0].name: is required"),
    (STORE + "[[targets]]\nname = 'q'\nurl = 'ftp://x/'", "targets[0].url: a http"),
    (STORE + "[[targets]]\nname = 'host'\nurl = 'http://x:1/'", "two sources are named 'host'"),
    (STORE + "[[logs]]\npath = 'a.log'\nformat = 'xml'", "logs[0].format: must be one of"),
    (
        STORE + "[[logs]]\npath = 'a.log'\nrules = [{name = 'x', pattern = '('}]",
        "logs[0].rules[0]: log rule 'x': bad pattern",
    ),
    (STORE + "[host]\nwatch = [true]", "host.watch[0]: must be a process name or a pid"),
    ("[store\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_key_or_value_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_the_command_refuses_a_bad_config_with_one_line_and_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\npath = 'q.db'\n[daemon]\nintervall = 1\n")
    done = collect("--config", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "daemon.intervall: unknown key" in done.stderr
    # A preset only the source can judge is refused before anything starts, too.
    path = write(
        tmp_path,
        "[store]\npath='q.db'\n[[targets]]\nname='a'\nurl='http://127.0.0.1:9/'\npreset='nope'\n",
    )
    done = collect("--config", str(path))
    assert done.returncode == 2 and "unknown preset 'nope'" in done.stderr, done.stderr
    assert not (tmp_path / "q.db").exists()


def test_without_a_config_and_without_a_lab_it_says_so(tmp_path: Path) -> None:
    done = collect(env={"QUELL_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.startswith("quell: no --config given and no lab is running")
    assert done.stderr.count("\n") == 1


def test_check_lists_what_would_be_collected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [store]
        path = "q.db"
        [[targets]]
        name = "engine"
        url = "http://user:secret@127.0.0.1:8000"
        [gpu]
        enabled = false
        """,
    )
    done = collect("--config", str(path), "--check")
    assert done.returncode == 0, done.stderr
    assert "engine: http http://user:***@127.0.0.1:8000" in done.stdout
    assert "host: psutil" in done.stdout and "gpu" not in done.stdout
    assert "secret" not in done.stdout


def test_the_lab_state_becomes_targets_logs_and_a_store_in_the_lab_dir(tmp_path: Path) -> None:
    state = {
        "lab_dir": str(tmp_path),
        "supervisor_pid": 10,
        "gateway": {"url": "http://127.0.0.1:1000", "pid": 11, "access_log": "/l/access.log"},
        "engines": [
            {"name": "engine-0", "url": "http://127.0.0.1:1001", "pid": 12},
            {"name": "engine-1", "url": "http://127.0.0.1:1002", "pid": 13},
        ],
    }
    config = lab_config(state)
    assert config.store.path == tmp_path / "quell.db"
    assert [(t.name, t.url, t.preset) for t in config.targets] == [
        ("gateway", "http://127.0.0.1:1000/metrics", "quell-gateway"),
        ("engine-0", "http://127.0.0.1:1001/metrics", "vllm"),
        ("engine-1", "http://127.0.0.1:1002/metrics", "vllm"),
    ]
    assert config.host.watch == (10, 11, 12, 13)
    assert [(str(log.path), log.format) for log in config.logs] == [("/l/access.log", "json")]
    with pytest.raises(ConfigError, match="lacks 'gateway'"):
        lab_config({"lab_dir": str(tmp_path), "engines": []})


def test_the_daemon_never_loads_textual(tmp_path: Path) -> None:
    """Run `quell collect` for real in a fresh interpreter, stop it, then inspect sys.modules."""
    log = tmp_path / "app.log"
    log.write_text("")
    path = write(
        tmp_path,
        f"""
        [store]
        path = "q.db"
        [daemon]
        interval_s = 0.1
        [host]
        enabled = false
        [gpu]
        enabled = false
        [[logs]]
        path = "{log}"
        """,
    )
    check = textwrap.dedent(
        f"""
        import os, signal, sys, threading
        from console.cli import main
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert main(["collect", "--config", {str(path)!r}]) == 0
        # The command wires the playbooks in (auto-start, the webhook); the
        # screen must stay out of a headless daemon.
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "textual")
        assert not loaded, loaded
        assert "playbooks.triggers" in sys.modules
        assert "collectors.daemon" in sys.modules and "collectors.store" in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped after" in done.stderr


DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_example_configs_are_valid(tmp_path: Path) -> None:
    host = load_config(DOCS / "quell.example.toml")
    assert [t.name for t in host.targets] == ["vllm", "nginx"]
    assert host.daemon.metrics_host == "127.0.0.1"
    assert {log.format for log in host.logs} == {"nginx_error", "nginx_access"}
    done = collect("--config", str(DOCS / "quell.example.toml"), "--check")
    assert done.returncode == 0, done.stderr
    # The lab example has its ports left to fill in from `quell lab status`.
    text = (DOCS / "quell-lab.example.toml").read_text()
    filled = write(tmp_path, text.replace("PORT", "8000"))
    lab = load_config(filled)
    assert [t.preset for t in lab.targets] == ["quell-gateway", "vllm", "vllm"]
    assert lab.store.path == tmp_path / "quell-lab.db"
    done = collect("--config", str(filled), "--check")
    assert done.returncode == 0, done.stderr


def test_the_systemd_unit_stops_gently_restarts_on_failure_and_is_confined() -> None:
    settings: dict[str, str] = {}
    for line in (DOCS / "quell-collect.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    assert settings["Type"] == "simple"
    assert settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["TimeoutStopSec"] == "5"
    assert settings["User"] == "quell"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["ReadWritePaths"] == "/var/lib/quell"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    example = load_config(DOCS / "quell.example.toml")
    assert str(example.store.path).startswith(settings["ReadWritePaths"] + "/")
