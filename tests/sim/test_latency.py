"""Seed sweep over WAN conditions: 50-150 ms one-way latency, DHT operations of 0.05-0.45 s, thin links.

Rounds here used to abort in most seeds: the plan reached members only through DHT reads slower
than the plan slots, so two candidates each published and used their own plan, and fixed
phase fractions left no room for the round trips. Plans are now offered to members directly and
the round clock sizes its phases from measured round trips, DHT times and throughput. On virtual
time the outcome of every seed is deterministic, so the committed share is checked as well as
the invariants.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.scenarios import latency_scenario
from tests.sim.test_sweep import run_checked

SEEDS_PER_CHUNK = 20
CHUNKS = int(os.environ.get("SIM_LATENCY_CHUNKS", "2"))
MIN_COMMITTED = 0.8  # share of member-rounds (committed + aborted) that commit, over a chunk


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_latency_sweep(chunk: int) -> None:
    committed = aborted = 0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        w = run_checked(latency_scenario(seed))
        for p in [*w.peers.values(), *w.gone]:
            committed += p.counters.rounds_committed
            aborted += p.counters.rounds_aborted
    share = committed / max(1, committed + aborted)
    print(f"chunk {chunk}: {committed} committed, {aborted} aborted ({share:.1%})")
    assert share >= MIN_COMMITTED, f"only {share:.1%} of member-rounds committed over WAN seeds"
