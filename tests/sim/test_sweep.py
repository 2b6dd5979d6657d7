"""Seed sweep: the real round protocol under seeded faults, invariants checked on every round.

A failure prints the scenario (seed, parameters, events) and the last rounds; run it again
with ``SIM_SEED=<seed> pytest tests/sim -k replay`` to replay it exactly.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.sim import invariants
from tests.sim.scenarios import random_scenario
from tests.sim.world import Scenario, World

SEEDS_PER_CHUNK = 25
CHUNKS = int(os.environ.get("SIM_CHUNKS", "8"))


def run_checked(sc: Scenario) -> World:
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    invariants.termination(w)
    invariants.bounded_loss(w)
    return w


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seed_sweep(chunk: int) -> None:
    t0, rounds = time.monotonic(), 0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        w = run_checked(random_scenario(seed))
        rounds += len(w.log) * max(1, len(w.peers))
    print(f"chunk {chunk}: {SEEDS_PER_CHUNK} seeds, {rounds} peer-rounds in {time.monotonic() - t0:.1f}s")


@pytest.mark.skipif("SIM_SEED" not in os.environ, reason="replays one seed given as SIM_SEED")
def test_replay() -> None:
    run_checked(random_scenario(int(os.environ["SIM_SEED"])))
