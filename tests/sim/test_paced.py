"""Work-paced rounds (``round.target_h``) on the simulated swarm: H on target on any hardware, no idling.

Four real peers train at their own speed (``Scenario.step_s`` times a per-peer factor). H is
what each peer's worker merged: inner steps between two of its committed syncs of a fragment
(tests/sim/pacing.py). The seed sweep runs the seeded faults of the main sweep with pacing on;
``SIM_PACED_SEEDS`` sets how many (default 16; the acceptance sweep used 300).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest

from tests.sim.pacing import measure, median_h, paced_random_scenario, paced_scenario
from tests.sim.test_sweep import check_seeds, pool, run_checked  # noqa: F401 - pool is a fixture
from tests.sim.world import World

TARGET = 30  # not a multiple of the fast peers' 8 steps per round
SEEDS = int(os.environ.get("SIM_PACED_SEEDS", "16"))
CHUNK = 50


def outcomes(w: World) -> Counter[str]:
    return Counter(row[2] for x in w.log[2:] for row in x.rows.values())


@pytest.mark.parametrize(("slow", "step_s", "duration_s"), [
    ({3: 3.0}, 0.25, 80.0),  # one peer 3x slower than the others
    ({}, 0.25, 80.0),  # all fast
    ({}, 0.75, 240.0),  # all slow: 3x fewer steps per round, so 3x the virtual time for as many syncs
], ids=["one_slow", "all_fast", "all_slow"])
def test_h_stays_on_target_without_idling(slow: dict[int, float], step_s: float, duration_s: float) -> None:
    w = run_checked(paced_scenario(1, TARGET, slow, step_s=step_s, duration_s=duration_s))
    paces = measure(w)
    assert all(len(p.h) >= 4 for p in paces), [p.h for p in paces]
    assert abs(median_h(paces) / TARGET - 1) <= 0.2, [p.h for p in paces]
    fast = [p for p in paces if p.step_s == step_s]
    assert all(abs(p.mean_h / TARGET - 1) <= 0.2 for p in fast), [p.h for p in fast]
    for p in paces:
        if p.step_s > step_s:  # the slow peer contributes its own steps, in proportion: about a third
            assert p.mean_h < 0.5 * TARGET, p.h
    assert all(p.idle == 0 and p.trained > 0 for p in paces), [(p.trained, p.idle) for p in paces]
    seen = outcomes(w)
    assert seen["not_due"] > 0 and seen["ok"] > 0 and set(seen) <= {"ok", "not_due"}, seen


def test_unpaced_h_follows_the_hardware() -> None:
    """The control: without target_h, H is num_fragments x steps per round, 3x apart on 3x slower boxes."""
    fast = median_h(measure(run_checked(paced_scenario(1, 0, step_s=0.25))))
    slow = median_h(measure(run_checked(paced_scenario(1, 0, step_s=0.75))))
    assert math.isclose(fast, 16, rel_tol=0.05) and math.isclose(slow, 16 / 3, rel_tol=0.1), (fast, slow)


def test_the_legacy_knob_idles_fast_workers_and_the_idle_count_sees_it() -> None:
    """train.max_steps_per_round=4 gets H=8 from workers that could do 8 steps a round: half of them idle."""
    w = run_checked(paced_scenario(1, 0, {3: 3.0}, config_steps=4))
    paces = measure(w)
    assert math.isclose(median_h(paces), 8, rel_tol=0.05)
    assert all(0.4 < p.idle_fraction < 0.6 for p in paces if p.step_s == 0.25), [p.idle_fraction for p in paces]
    assert [p.idle for p in paces if p.step_s > 0.25] == [0]


def test_a_target_the_network_cannot_reach_syncs_every_round_and_says_so() -> None:
    """2 s rounds, 2 fragments, 8 steps per round: H=8 needs a fragment every round each; 16 is the best."""
    w = run_checked(paced_scenario(1, 8, {3: 3.0}))
    seen = outcomes(w)
    assert seen["not_due"] == 0 and set(seen) == {"ok"}, seen
    assert all(p.node.driver.pacing.status()["behind"] for p in w.peers.values())
    assert all(p.metrics.pace_behind._value.get() == 1 for p in w.peers.values())
    assert math.isclose(median_h(measure(w)), 16, rel_tol=0.1)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("chunk", range(math.ceil(SEEDS / CHUNK)))
def test_paced_seed_sweep(chunk: int, pool) -> None:  # noqa: F811 - the fixture
    seeds = range(chunk * CHUNK, min(SEEDS, (chunk + 1) * CHUNK))
    check_seeds(pool, paced_random_scenario, seeds, f"paced sim chunk {chunk}")


@pytest.mark.skipif("SIM_PACED_SEED" not in os.environ, reason="replays one paced seed given as SIM_PACED_SEED")
def test_paced_replay() -> None:
    sc = paced_random_scenario(int(os.environ["SIM_PACED_SEED"]))
    print(sc.describe(), sc.config)
    run_checked(sc)
