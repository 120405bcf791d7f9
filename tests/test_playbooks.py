"""Playbook files, the expression language, the journal, and `quell play` against a
real gateway and engine (the closed loops against the lab are in
test_playbooks_lab.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from playbooks import expressions
from playbooks.journal import Busy, Journal
from playbooks.loader import load_catalog, parse
from playbooks.model import PlaybookError
from tests.gateway_helpers import ADMIN_TOKEN, gateway, gateway_config, state
from tests.servers import RunningServer, engine, quell_command

BUILT_INS = {
    "tighten-limits", "shed-sheddable", "trip-breaker", "reset-breaker", "drain-replica",
    "scale-workers", "scale-replicas", "raise-queue-capacity", "enable-cache", "restore-baseline",
}  # fmt: skip


# -- files ------------------------------------------------------------------


def test_every_built_in_loads_and_names_the_verdicts_it_answers() -> None:
    catalog = load_catalog()
    assert set(catalog) == BUILT_INS
    for playbook in catalog.values():
        assert playbook.answers, playbook.name
        assert playbook.description
    assert "only buys time" in catalog["raise-queue-capacity"].warning
    assert catalog["tighten-limits"].auto is not None
    assert catalog["scale-replicas"].auto is None  # never unattended unless written


def test_the_diagnosis_recommends_only_playbooks_that_exist() -> None:
    from collectors.diagnosis import PLAYBOOKS

    recommended = {name for names in PLAYBOOKS.values() for name in names}
    assert recommended <= BUILT_INS


GOOD = """\
name: drill
description: a test
params:
  workers: {type: int, default: 8, min: 1, max: 64}
steps:
  - action: gateway.queue
    args: {workers: "{{ params.workers }}"}
  - verify: occupancy < 0.7
    within: 5s
"""


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        (GOOD.replace("description:", "descripton:"), 2, "unknown key 'descripton'"),
        (GOOD.replace("gateway.queue", "gateway.qeue"), 6, "unknown action 'gateway.qeue'"),
        (GOOD.replace("max: 64}", "max: 64"), 5, "not valid YAML"),
        (GOOD.replace("default: 8", "default: 80"), 4, "at most 64"),
        (GOOD.replace("params.workers", "params.wrkers"), 7, "not a declared parameter"),
        (GOOD.replace("occupancy < 0.7", "__import__('os')"), 8, "may be called"),
        (GOOD.replace("occupancy < 0.7", "occupancy <"), 8, "cannot parse"),
        (GOOD.replace("within: 5s", "within: soon"), 9, "duration"),
        (GOOD.replace("{{ params.workers }}", "{{ env.TOKEN }}x{{ signals.depth.__class__ }}"),
         7, "private"),
        (GOOD.replace("default: 8", "default: '{{ env.HOME }}'"), 4, "not available here"),
        (GOOD.replace("args: {workers:", "args: {wrokers:"), 7, "unknown argument 'wrokers'"),
    ],
)  # fmt: skip
def test_a_malformed_file_names_the_file_the_line_and_what_was_expected(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = tmp_path / "drill.yaml"
    with pytest.raises(PlaybookError) as error:
        parse(text, path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert expected in message


def test_a_good_file_parses(tmp_path: Path) -> None:
    playbook = parse(GOOD, tmp_path / "drill.yaml")
    assert [s.kind for s in playbook.steps] == ["action", "verify"]
    assert playbook.rollback is None and playbook.auto is None


def test_expressions_compute_but_cannot_reach_python() -> None:
    scope = {"signals": {"service_rate": 40.0}, "params": {"share": 0.5}}
    assert expressions.render("{{ round(params.share * signals.service_rate, 1) }}", scope) == 20.0
    assert expressions.render("limit {{ 2 + 3 }}/s", scope) == "limit 5/s"
    assert expressions.evaluate("1 < 2 < 3 and not 0", {}) is True
    for hostile in (
        "__import__('os').system('true')", "().__class__", "(lambda: 1)()", "open('/etc/passwd')",
        "[x for x in range(10)]", "signals.service_rate ** 99999",
    ):  # fmt: skip
        with pytest.raises(expressions.ExpressionError):
            expressions.evaluate(hostile, scope)
    with pytest.raises(expressions.Unknown):
        expressions.evaluate("signals.depth", scope)


# -- the journal ------------------------------------------------------------


def test_the_audit_chain_shows_a_silent_edit(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "quell.db")
    run = journal.start("drill", "gateway", "manual", "running", {"who": "a@b"})
    journal.note(run, {"event": "change", "knob": "workers", "before": 32, "after": 64})
    journal.finish(run, "applied", {"who": "a@b", "outcome": "ok"})
    assert journal.verify_chain() == []
    journal.close()
    with sqlite3.connect(tmp_path / "quell.db") as db:
        db.execute("UPDATE audit SET payload_json = replace(payload_json, '64', '48') WHERE id = 2")
    problems = Journal(tmp_path / "quell.db").verify_chain()
    assert problems and "audit row 2" in problems[0]


def test_cooldown_and_hourly_cap_hold_for_everyone(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "quell.db")
    run = journal.start("drill", "gateway", "auto: producer_surge", "running", {})
    journal.finish(run, "applied", {})
    with pytest.raises(Busy, match="cooling down"):
        journal.check_limits("drill", "gateway", cooldown_s=60, max_runs_per_hour=0)
    journal.check_limits("drill", "other-gateway", cooldown_s=60, max_runs_per_hour=0)
    with pytest.raises(Busy, match="cap 1"):
        journal.check_limits("drill", "gateway", cooldown_s=0, max_runs_per_hour=1)
    dry = journal.start("drill", "gateway", "manual", "dry_run", {})
    assert dry and journal.run(dry)["status"] == "dry_run"  # type: ignore[index]
    journal.check_limits("drill", "gateway", cooldown_s=0, max_runs_per_hour=2)


def test_one_run_per_target_at_a_time(tmp_path: Path) -> None:
    first = Journal(tmp_path / "quell.db")
    second = Journal(tmp_path / "quell.db")
    first.lock("gateway", "drill by a@b")
    with pytest.raises(Busy, match="drill by a@b"):
        second.lock("gateway", "drill by c@d")
    second.lock("another", "drill by c@d")
    first.release("gateway")
    second.lock("gateway", "drill by c@d")


# -- `quell play` against a real gateway --------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("play")
    with engine() as upstream:
        config = gateway_config(directory, {"engine-0": upstream.url})
        with gateway(config) as server:
            yield server


def play(
    server: RunningServer, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "books").mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "QUELL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "QUELL_STATE_DIR": str(tmp_path / "state"),
        **(env or {}),
    }
    argv = quell_command(
        "play", "--gateway", server.url, "--store", str(tmp_path / "quell.db"),
        "--window", "2", "--dir", str(tmp_path / "books"), *args,
    )  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=full_env)


def book(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / "books").mkdir(exist_ok=True)
    (tmp_path / "books" / f"{name}.yaml").write_text(text)


def queue_settings(server: RunningServer) -> dict[str, Any]:
    return {k: state(server)["queue"][k] for k in ("workers", "capacity", "timeout_s")}


def test_dry_run_prints_current_and_new_values_and_changes_nothing(
    system: RunningServer, tmp_path: Path
) -> None:
    book(tmp_path, "none", GOOD.replace("drill", "none"))
    before = queue_settings(system)
    result = play(system, tmp_path, "scale-workers", "--dry-run", "--param", "factor=2")
    assert result.returncode == 0, result.stderr
    assert f"workers: {before['workers']} -> {before['workers'] * 2}" in result.stdout
    assert queue_settings(system) == before
    history = json.loads(play(system, tmp_path, "--history", "--json").stdout)
    assert history[0]["status"] == "dry_run" and history[0]["playbook"] == "scale-workers"
    assert "@" in history[0]["who"]


def test_a_verification_that_cannot_pass_rolls_back_and_exits_3(
    system: RunningServer, tmp_path: Path
) -> None:
    text = GOOD.replace("drill", "hopeless").replace("occupancy < 0.7", "occupancy > 5")
    book(tmp_path, "hopeless", text.replace("within: 5s", "within: 2s"))
    before = queue_settings(system)
    result = play(system, tmp_path, "hopeless", "--yes", "--param", "workers=3", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "rolled_back"
    assert [e["event"] for e in report["events"]].count("undone") == 1
    assert queue_settings(system) == before


def test_two_runs_on_one_target_one_wins_the_other_exits_5(
    system: RunningServer, tmp_path: Path
) -> None:
    book(tmp_path, "slow", GOOD.replace("drill", "slow")
         .replace("  - verify: occupancy < 0.7\n    within: 5s\n", "  - wait: 4s\n"))  # fmt: skip
    env = {**os.environ, "QUELL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    argv = quell_command(
        "play", "slow", "--yes", "--gateway", system.url, "--store", str(tmp_path / "quell.db"),
        "--window", "0", "--dir", str(tmp_path / "books"), "--force",
    )  # fmt: skip
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]  # fmt: skip
    codes = sorted(p.wait(60) for p in runs)
    assert codes == [0, 5], [p.communicate() for p in runs]
    busy = next(p for p in runs if p.returncode == 5)
    assert "locked by a run in progress" in (busy.stderr.read() if busy.stderr else "")
    play(system, tmp_path, "--rollback", "1", "--yes")


def test_bad_input_is_refused_before_anything_changes(
    system: RunningServer, tmp_path: Path
) -> None:
    before = queue_settings(system)
    cases = [
        (("no-such-playbook", "--yes"), "no playbook 'no-such-playbook'"),
        (("scale-workers", "--yes", "--param", "factor=99"), "at most 16"),
        (("scale-workers", "--yes", "--param", "fctor=2"), "no parameter 'fctor'"),
        (("scale-workers", "--yes", "--param", "factor"), "NAME=VALUE"),
        (("scale-workers",), "give --yes"),
        (("scale-workers", "--yes", "--read-only"), "read-only"),
        (("--rollback", "999", "--yes"), "no run 999"),
    ]
    for args, message in cases:
        result = play(system, tmp_path, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    book(tmp_path, "broken", "name: broken\nsteps:\n  - action: gateway.queue\n    args: 5\n")
    result = play(system, tmp_path, "--list")
    assert result.returncode == 2
    assert f"{tmp_path / 'books' / 'broken.yaml'}:4:" in result.stderr
    assert queue_settings(system) == before


def test_a_precondition_that_does_not_hold_exits_4(system: RunningServer, tmp_path: Path) -> None:
    result = play(system, tmp_path, "tighten-limits", "--yes")
    assert result.returncode == 4, result.stderr
    assert "there is no verdict" in result.stderr


def test_secrets_from_the_environment_never_reach_the_journal(
    system: RunningServer, tmp_path: Path
) -> None:
    secret = "s3cr3t-token-for-the-test"
    book(tmp_path, "call", f"""\
name: call
description: an admin call with a token from the environment
steps:
  - action: http
    args:
      method: GET
      url: "{system.url}/admin/state"
      headers: {{Authorization: "Bearer {{{{ env.CALL_TOKEN }}}}"}}
      expect: 200
""")  # fmt: skip
    result = play(system, tmp_path, "call", "--yes", env={"CALL_TOKEN": ADMIN_TOKEN + ""})
    assert result.returncode == 0, result.stderr
    denied = play(system, tmp_path, "call", "--yes", env={"CALL_TOKEN": secret})
    assert denied.returncode == 6, denied.stderr
    stored = (tmp_path / "quell.db").read_bytes()
    wal = tmp_path / "quell.db-wal"
    stored += wal.read_bytes() if wal.exists() else b""
    assert secret.encode() not in stored and ADMIN_TOKEN.encode() not in stored
    assert secret not in denied.stdout + denied.stderr


def test_exec_takes_an_argument_list_and_never_a_shell(
    system: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "argv.json"
    hostile = "x; touch " + str(tmp_path / "pwned") + " && echo $(id)"
    script = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    book(tmp_path, "run", f"""\
name: run
description: a command with a hostile argument
params:
  replicas: {{type: str, default: "{hostile}"}}
steps:
  - action: exec
    args:
      argv: ["{sys.executable}", "-c", "{script}", "{out}",
             "--replicas={{{{ params.replicas }}}}"]
      timeout_s: 10
""")  # fmt: skip
    result = play(system, tmp_path, "run", "--yes")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == [str(out), f"--replicas={hostile}"]
    assert not (tmp_path / "pwned").exists()


def test_history_rollback_and_an_intact_chain(system: RunningServer, tmp_path: Path) -> None:
    before = queue_settings(system)
    applied = play(system, tmp_path, "scale-workers", "--yes", "--param", "factor=2", "--json")
    # Nothing flows through this gateway, so the verification passes at once.
    assert applied.returncode == 0, applied.stderr
    run_id = json.loads(applied.stdout)["run_id"]
    assert queue_settings(system)["workers"] == before["workers"] * 2
    undone = play(system, tmp_path, "--rollback", str(run_id), "--yes", "--json")
    assert undone.returncode == 0, undone.stderr
    assert queue_settings(system) == before
    runs = {r["id"]: r for r in json.loads(play(system, tmp_path, "--history", "--json").stdout)}
    assert runs[run_id]["status"] == "rolled_back"
    assert play(system, tmp_path, "--verify-audit").returncode == 0
    again = play(system, tmp_path, "scale-workers", "--yes", "--param", "factor=2")
    assert again.returncode == 5 and "cooling down" in again.stderr
    time.sleep(0)


def test_the_kubernetes_example_playbook_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "playbooks" / "scale-deployment.yaml"
    playbook = parse(path.read_text(), path)
    [scale] = [s for s in playbook.steps if s.kind == "action"]
    assert scale.action == "exec" and scale.args["argv"][0] == "kubectl"
