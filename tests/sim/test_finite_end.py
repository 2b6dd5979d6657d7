"""Regressions at the end of a finite run: two states (sweep seed 1468), and a done peer that never left (1516).

Six peers finish training together; the final rounds are rounds 5 (fragment 1) and 6 (fragment 0),
and the run ends at revision 6. Two of them miss round 6, which the other four commit: they catch
up (the install throws their own progress on fragment 0 away) and sit at the others' revision and
hash, done, but without a final round of fragment 0. The four had theirs: they looked settled,
published no plan between their two looks, and left. The two were not ranked to publish in that
round (two plan candidates of six), formed a round between themselves after the others left and
ended a revision later (a weightless round: same parameters, revision + 1). Now a done peer that
finds the peers it was settled with gone adopts their state and leaves too, and while a view is
settled its publisher names suspected peers as well (peerd/node/finish.py).
"""

from __future__ import annotations

import pytest

from tests.sim import invariants
from tests.sim.world import Event, Scenario, World

PEERS = 6


def _end(events: list[Event]) -> World:
    sc = Scenario(seed=7, peers=PEERS, duration_s=60.0, max_steps=16, step_s=0.5, jitter_s=0.0, events=events)
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    invariants.termination(w)
    return w


def _one_end(w: World) -> None:
    ends = {(p.state.revision, p.state.state_hash()) for p in [*w.peers.values(), *w.gone]}
    assert len(ends) == 1, f"finite run ended on {len(ends)} states: {sorted(ends)}"
    assert all(p.stopped == "done" for p in [*w.peers.values(), *w.gone])


@pytest.mark.parametrize("stragglers", [(4, 5), (0, 4)])
def test_stragglers_that_lost_the_last_round_end_on_the_leavers_state(stragglers: tuple[int, int]) -> None:
    # Round 6 (t 12-14): every call from the others to the two is lost while it reduces, so the two
    # abort and the four commit. Before the fix: four ended at revision 6, the two at 7.
    lost = [Event(12.3, "lose", p, 1.5, other=v) for v in stragglers for p in range(PEERS) if p not in stragglers]
    _one_end(_end(lost))


def test_peers_suspected_in_the_last_round_are_still_named() -> None:
    # Just before round 6's plan every peer suspects the two (as after a round they failed): the
    # final round went on without them. Before the fix: four ended at revision 6, the two at 7.
    suspected = [Event(12.05, "suspect", p, other=v) for v in (4, 5) for p in range(PEERS) if p != v]
    _one_end(_end(suspected))


def test_a_done_client_does_not_wait_for_a_client_joiner_it_cannot_serve() -> None:
    # Sweep seed 1516, reduced: peer 0 (the only reachable peer) dies for good; peer 1, a client,
    # restarts with no checkpoint while only peer 2, a done client, is up. Neither can dial the
    # other, so peer 1 can get the state from nobody; it announces itself (not ready) while it
    # retries. Before the fix peer 2 waited for it until the deadline, and neither finished.
    events = [Event(5.34, "crash", 0), Event(5.85, "crash", 1), Event(7.0, "restart", 1)]
    sc = Scenario(seed=1516, peers=3, duration_s=71.0, max_steps=16, step_s=0.5, latency_s=0.02, jitter_s=0.02,
                  dht_delay_s=0.05, slow={1: 3.0}, clients={1, 2}, events=events)
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    assert [p.index for p in w.orphans] == [1]
    invariants.termination(w)
