"""Scenario files and the arrival process, without servers."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from inference.lab.scenario import (
    CAUSES,
    ScenarioError,
    builtin_names,
    load_scenario,
    parse_scenario,
    scaled,
)
from inference.lab.traffic import arrival_times, draw

MINIMAL = """
name = "x"
duration_s = 10
[traffic]
unit = "rps"
profile = [[0, 100]]
"""

EXPECTED_BUILTINS = {
    "steady", "producer_surge", "ramp", "consumer_slowdown", "stalled_consumers",
    "dependency_slow", "resource_saturation", "hot_replica", "retry_storm", "undersized_queue",
}  # fmt: skip


def test_every_builtin_parses_and_names_a_known_cause() -> None:
    assert set(builtin_names()) == EXPECTED_BUILTINS
    for name in builtin_names():
        scenario = load_scenario(name)
        assert scenario.cause in CAUSES
        assert scenario.description
        assert 0 <= scenario.onset_s < scenario.duration_s
        if scenario.cause != "none":
            assert scenario.onset_s > 0, "a cause needs a quiet lead-in to score detection against"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\n", "'duration_s' is required"),
        ("name = 'x'\nduration_s = 5\n", "[traffic] is required"),
        ("name = 'x'\nduration_s = 5\n[traffic]\nprofile = []\n", "at least one"),
        ("name = 'x'\nduration_s = 5\n[traffic]\nprofile = [[0, -1]]\n", "profile[0]"),
        ("name = 'x'\nduration_s = 5\n[traffic]\nprofile = [[5, 1], [2, 1]]\n", "must not go back"),
        (
            "name = 'x'\nduration_s = 5\ncause = 'aliens'\n[traffic]\nprofile = [[0, 1]]\n",
            "'cause'",
        ),
        ("name = 'x'\nduration_s = 5\n[traffic]\nprofile = [[0, 1]]\nclient = 'pushy'\n", "client"),
        ("name = 'x'\nduration_s = 5\n[traffic]\nprofile = [[0, 1]]\nspeed = 3\n", "unknown key"),
        (MINIMAL + "[[faults]]\nat_s = 1\nset = {warp = 2}\n", "unknown key"),
        (MINIMAL + "[[faults]]\nat_s = 1\nclear = true\ncrash = true\n", "exactly one"),
        (MINIMAL + "[[faults]]\nat_s = 1\nreplica = -1\nclear = true\n", "'replica'"),
        (MINIMAL.replace("profile", "max_tokens = {dist = 'zipf'}\nprofile"), "'dist'"),
        ("name = 'x'\nduration_s = [\n", "not valid TOML"),
    ],
)
def test_bad_scenarios_are_refused_with_where_and_why(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(text, "my.toml")
    assert "my.toml" in str(raised.value)
    assert message in str(raised.value)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError, match=r"built-in: .*producer_surge"):
        load_scenario("no_such_scenario")


def test_profile_is_piecewise_linear_with_steps() -> None:
    scenario = parse_scenario(MINIMAL.replace("[[0, 100]]", "[[0, 1], [10, 3], [10, 8], [20, 8]]"))
    traffic = scenario.traffic
    assert traffic.level_at(-1) == 1
    assert traffic.level_at(5) == pytest.approx(2)
    assert traffic.level_at(10) == 8
    assert traffic.level_at(99) == 8


def test_phases_change_request_shapes_from_their_time() -> None:
    scenario = parse_scenario(
        MINIMAL + "[[traffic.phases]]\nat_s = 5\nprompt_tokens = 3000\nkeys = {batch = 1}\n"
    )
    before = scenario.traffic.shapes_at(1)
    after = scenario.traffic.shapes_at(6)
    assert before[0].kind == "lognormal" and before[3] == ()
    assert after[0].mean() == 3000
    assert after[3] == (("batch", 1.0),)


def test_scaling_compresses_every_time() -> None:
    scenario = scaled(load_scenario("consumer_slowdown"), 0.5)
    assert scenario.onset_s == 10 and scenario.duration_s == 37.5
    assert [f.at_s for f in scenario.faults] == [10, 27.5]


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps() -> None:
    traffic = parse_scenario(MINIMAL).traffic
    times = list(arrival_times(traffic, 100.0, lambda t: 100.0, random.Random(1)))
    assert 9_700 < len(times) < 10_300  # mean 10,000, sd 100
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)


def test_constant_arrivals_are_evenly_spaced() -> None:
    traffic = parse_scenario(
        MINIMAL.replace('unit = "rps"', 'unit = "rps"\narrival = "constant"')
    ).traffic
    times = list(arrival_times(traffic, 10.0, lambda t: 50.0, random.Random(1)))
    assert len(times) == 500
    assert {round(b - a, 6) for a, b in itertools.pairwise(times)} == {0.02}


def test_arrivals_follow_a_step_in_the_profile() -> None:
    text = MINIMAL.replace("[[0, 100]]", "[[0, 100], [50, 100], [50, 400]]")
    traffic = parse_scenario(text).traffic
    times = list(arrival_times(traffic, 100.0, lambda t: traffic.level_at(t), random.Random(2)))
    first = sum(1 for t in times if t < 50)
    second = sum(1 for t in times if t >= 50)
    assert second / first == pytest.approx(4.0, rel=0.1)


def test_draws_respect_their_bounds() -> None:
    rng = random.Random(3)
    dist = parse_scenario(
        MINIMAL.replace(
            "profile",
            "prompt_tokens = {dist = 'lognormal', median = 100, sigma = 2, min = 10, max = 500}"
            "\nprofile",
        )
    ).traffic.prompt_tokens
    values = [draw(dist, rng) for _ in range(2000)]
    assert min(values) == 10 and max(values) == 500
