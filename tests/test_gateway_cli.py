"""`quell gateway` at the command line: hash-key, bad configs, flags over the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.gateway_helpers import digest, gateway_config
from tests.servers import quell_command, running


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        quell_command(*args), input=stdin, capture_output=True, text=True, timeout=20
    )


def test_hash_key_prints_the_sha256_of_stdin() -> None:
    result = run("gateway", "hash-key", stdin="sk-team-a\n")
    assert result.returncode == 0
    assert result.stdout == digest("sk-team-a") + "\n"
    empty = run("gateway", "hash-key", stdin="")
    assert empty.returncode == 2 and "no key" in empty.stderr


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[queue]\nworkers = -1\n", "queue.workers"),
        ("[queue]\ncapacity = 10\nsurprise = true\n", "queue.surprise"),
        ('[[upstreams]]\nname = "e"\n', "upstreams[0].url"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    result = run("gateway", "serve", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr and str(path) in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("gateway", "serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_flags_override_the_file_and_port_0_picks_a_free_port(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, {}, server={"host": "192.0.2.1", "port": 1})
    argv = quell_command("gateway", "serve", "--config", str(config), "--host", "127.0.0.1",
                         "--port", "0")  # fmt: skip
    with running(argv) as gw:
        assert gw.url.startswith("http://127.0.0.1:") and not gw.url.endswith(":1")
        health = httpx.get(f"{gw.url}/health").json()
        assert health == {"status": "ok", "upstreams": 0, "upstreams_available": 0}


def test_serve_help_mentions_the_config_and_admin_token() -> None:
    result = run("gateway", "serve", "--help")
    assert result.returncode == 0
    for word in ("--config", "--host", "--port", "QUELL_GATEWAY_ADMIN_TOKEN"):
        assert word in result.stdout
