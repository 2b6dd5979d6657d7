"""Work-paced gossip rounds (``round.target_h`` with ``mixing.mode=gossip``) on the simulated swarm.

The same pacing as DiLoCo's (peerd/core/pace.py, chosen by the plan's publisher): a peer's pairwise
exchange of a fragment comes about every H inner steps of the median member, the rounds in between
hold (nothing exchanged) and no worker idles. H is what each peer's worker merged at a committed
exchange (tests/sim/pacing.py). Every run checks gossip mass conservation after every round
(``run_checked``: invariants.mass). Before pacing covered gossip its config refused
``round.target_h`` and H followed the hardware (the control test below).
``SIM_PACED_GOSSIP_SEEDS`` sets how many seeds the faulted sweep runs (default 16).
"""

from __future__ import annotations

import math
import os
from functools import partial

import pytest

from tests.sim.pacing import measure, median_h, paced_random_scenario, paced_scenario
from tests.sim.test_paced import outcomes
from tests.sim.test_sweep import check_seeds, pool, run_checked  # noqa: F401 - pool is a fixture

TARGET = 30  # not a multiple of the fast peers' 8 steps per 2 s round
SEEDS = int(os.environ.get("SIM_PACED_GOSSIP_SEEDS", "16"))
CHUNK = 50


@pytest.mark.parametrize(("slow", "topology"), [
    ({3: 3.0}, "random"),  # one peer 3x slower than the others
    ({}, "hypercube"),  # all fast; pairs from the paced rounds' hashed index
], ids=["one_slow_random", "all_fast_hypercube"])
def test_gossip_h_stays_on_target_and_holds_between(slow: dict[int, float], topology: str) -> None:
    w = run_checked(paced_scenario(1, TARGET, slow, mode="gossip", extra={"mixing.topology": topology}))
    paces = measure(w)
    assert all(len(p.h) >= 4 for p in paces), [p.h for p in paces]
    assert abs(median_h(paces) / TARGET - 1) <= 0.2, [p.h for p in paces]
    fast = [p for p in paces if p.step_s == 0.25]
    assert all(abs(p.mean_h / TARGET - 1) <= 0.2 for p in fast), [p.h for p in fast]
    assert all(p.idle == 0 and p.trained > 0 for p in paces), [(p.trained, p.idle) for p in paces]
    seen = outcomes(w)
    # At 8 steps a round each of the 2 fragments is due about every 30 / 8 = 3.75 rounds: about
    # half the rounds exchange one, the others hold (with clock rounds every round exchanges).
    assert seen["ok"] > 0 and set(seen) <= {"ok", "not_due"}, seen
    assert 0.3 < seen["not_due"] / (seen["ok"] + seen["not_due"]) < 0.7, seen
    assert all(p.node.mixer.mode == "gossip" and p.node.driver.pacing.target_h == TARGET for p in w.peers.values())


def test_unpaced_gossip_h_follows_the_hardware() -> None:
    """The control: clock rounds exchange every round, so H = num_fragments x steps per round.

    On 3x slower workers H is well below the fast ones' 16 (not exactly 16 / 3: a 0.75 s step
    often outlasts the snapshot's wait, and that exchange rebases the worker instead of merging, so
    its steps count towards the next merge's H).
    """
    fast_w = run_checked(paced_scenario(1, 0, step_s=0.25, mode="gossip"))
    fast = median_h(measure(fast_w))
    slow = median_h(measure(run_checked(paced_scenario(1, 0, step_s=0.75, mode="gossip"))))
    assert math.isclose(fast, 16, rel_tol=0.05) and slow < 0.6 * fast, (fast, slow)
    assert outcomes(fast_w)["not_due"] == 0


def test_a_gossip_target_below_one_fragment_per_round_exchanges_every_round_and_says_so() -> None:
    """H=8 with 2 fragments at 8 steps a round: the best is a fragment every round, H 16, and 'behind'."""
    w = run_checked(paced_scenario(1, 8, mode="gossip"))
    seen = outcomes(w)
    assert seen["not_due"] == 0 and set(seen) == {"ok"}, seen
    assert all(p.node.driver.pacing.status()["behind"] for p in w.peers.values())
    assert math.isclose(median_h(measure(w)), 16, rel_tol=0.1)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("chunk", range(math.ceil(SEEDS / CHUNK)))
def test_paced_gossip_seed_sweep(chunk: int, pool) -> None:  # noqa: F811 - the fixture
    """The main sweep's seeded faults (loss, stalls, crashes, joins, cuts, NAT) in paced gossip mode."""
    seeds = range(chunk * CHUNK, min(SEEDS, (chunk + 1) * CHUNK))
    check_seeds(pool, partial(paced_random_scenario, mode="gossip"), seeds, f"paced gossip sim chunk {chunk}")


@pytest.mark.skipif("SIM_PACED_GOSSIP_SEED" not in os.environ,
                    reason="replays one paced gossip seed given as SIM_PACED_GOSSIP_SEED")
def test_paced_gossip_replay() -> None:
    sc = paced_random_scenario(int(os.environ["SIM_PACED_GOSSIP_SEED"]), mode="gossip")
    print(sc.describe(), sc.config)
    run_checked(sc)
