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
from tests.sim.world import Scenario

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


def test_a_reduced_shard_that_arrives_after_the_deadline_commits_late_instead_of_aborting() -> None:
    """One owner 1.5 s one-way from the others (rounds of 2 s): its reduced shard lands after the
    plan's deadline but before the next round starts. The round stays open until then, so members
    commit late; they used to abort it, resync, and lose most rounds (measured before the late
    window: 10 committed, 33 aborted, 20 skipped out of sync, over 60 s)."""
    sc = Scenario(seed=3, peers=3, duration_s=60.0, asym={(1, 0): 1.5, (1, 2): 1.5})
    w = run_checked(sc)
    committed = sum(p.counters.rounds_committed for p in w.peers.values())
    aborted = sum(p.counters.rounds_aborted for p in w.peers.values())
    late = sum(p.node.mixer.late_commits for p in w.peers.values())
    assert committed >= 0.9 * (committed + aborted) and committed >= 60, (committed, aborted)
    assert late >= 0.5 * committed, f"only {late} of {committed} commits came late: not a test of the window"
    # The run stops mid-round: a member may not have committed the last round yet (late).
    ends = {(p.state.revision, p.state.state_hash()) for p in w.peers.values()}
    top = max(r for r, _ in ends)
    assert len({h for r, h in ends if r == top}) == 1 and min(r for r, _ in ends) >= top - 1, ends


def test_a_gossip_message_over_a_slow_capped_one_way_path_still_commits_the_exchange() -> None:
    """Peer 0 uploads at 1000 B/s and its packets take 0.3 s to reach peer 1 (the way back is fast).
    Its message used to land after peer 1's collect deadline every round: both sides ended every
    round unconfirmed from the third on (sweep seed 1566). Receivers now take messages until the
    plan's deadline, as long as senders wait for the acknowledgement."""
    sc = Scenario(seed=1566, peers=2, mode="gossip", duration_s=24.0, latency_s=0.02, dht_delay_s=0.01,
                  slow={1: 3.0}, asym={(0, 1): 0.3}, uplink={0: 1000.0})
    w = run_checked(sc)
    committed = sum(p.counters.rounds_committed for p in w.peers.values())
    aborted = sum(p.counters.rounds_aborted for p in w.peers.values())
    assert committed >= 0.8 * (committed + aborted) and committed >= 10, (committed, aborted)
