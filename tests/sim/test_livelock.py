"""Regressions found on main e93a998 (`peerd swarm` under load), replayed on virtual time.

1. **Out-of-phase suspicion livelock.** After an aborted round a peer suspected the missing
   member for ``ttl_s + round_s``; a finished peer's record never moves, so it was never
   readmitted early. Peer A suspected B from round r, B suspected A from round r+1: each
   skipped the rounds it suspected, the other ran them alone, aborted and suspected back, for
   the rest of the run (79 aborted rounds in a row on two peers). The plan now decides
   membership: suspicions only shape the plans a peer publishes, and a peer takes part in any
   plan that names it.
2. **Split end.** A lost reduced shard let one peer commit a final round that the other
   aborted; the committer had its final rounds and left, the other ended one revision behind,
   and the run "succeeded". A peer now leaves only after two consecutive rounds in which every
   ready peer is done and at its revision and hash.
"""

from __future__ import annotations

from tests.sim import invariants
from tests.sim.world import Event, Scenario, World


def test_finished_peers_suspecting_each_other_out_of_phase_still_commit() -> None:
    # Two peers done training (they stay: no --exit-when-done), then suspicions one round apart,
    # exactly the state the livelock ran in.
    sc = Scenario(seed=1, peers=2, duration_s=40.0, max_steps=8, exit_when_done=False, step_s=0.5,
                  events=[Event(12.1, "suspect", 0, other=1), Event(14.1, "suspect", 1, other=0)])
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    late = [x for x in w.log if x.r * w.cfg.round.round_s - w.epoch > 16.0]
    assert any(row[2] == "ok" for x in late for row in x.rows.values()), "no commit after the suspicions"


def test_a_lost_reduced_shard_in_the_last_rounds_does_not_split_the_end() -> None:
    sc = Scenario(seed=1, peers=4, duration_s=60.0, max_steps=16, step_s=0.5,
                  events=[Event(12.6, "lose", 0, 0.3, other=2)])
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    invariants.termination(w)
    ends = {(p.state.revision, p.state.state_hash()) for p in w.peers.values()}
    assert len(ends) == 1 and all(p.stopped == "done" for p in w.peers.values()), ends
