"""The `quell` command as a user meets it: help, version, and bad input."""

from __future__ import annotations

import socket
import subprocess

from console.cli import build_parser
from tests.servers import quell_command


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(quell_command(*args), capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("quell ")


def test_engine_serve_help_documents_every_flag() -> None:
    result = run("engine", "serve", "--help")
    assert result.returncode == 0
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["engine"]  # type: ignore[union-attr]
    serve = serve._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 14
    for action in flags:
        assert action.help, f"{action.option_strings} has no help text"
        assert action.option_strings[0] in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: quell" in result.stderr


def test_out_of_range_flag_is_a_clear_error_not_a_traceback() -> None:
    for args in (
        ("--slots", "0"),
        ("--port", "70000"),
        ("--decode-step-ms", "-1"),
        ("--slots", "x"),
    ):
        result = run("engine", "serve", *args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
        assert args[0] in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("engine", "serve", "--port", str(port))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_unreadable_admin_token_file_is_a_clear_error(tmp_path) -> None:
    result = run("engine", "serve", "--port", "0", "--admin-token-file", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_stops_the_engine_cleanly() -> None:
    from tests.servers import FAST_ENGINE, engine

    with engine(*FAST_ENGINE) as server:
        assert server.stop() == 0
    assert not any("Traceback" in line for line in server.output)
