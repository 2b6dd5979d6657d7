"""Peers whose view reads differ still agree on who publishes a round's plan.

On a loaded box a DHT read returns what the replicas that answered in time hold: 16 daemons on
2 cores read between 7 and 12 of the same 16 peers in one round. Plan slots were ordered over
the eligible peers of each reader's own view, so a peer whose read lacked the leader took itself
for the leader and published a rival plan at once; the round split and aborted. Slots are now
ordered over the members of the last commit, a list every committer holds exactly
(``PlanElection._order``).

Here peer 1's reads return only peer 4's record for a while (longer than a view keeps a missed
record), so by its own view it leads every round in which it ranks above peer 4; every round's
plan must still be one plan.
"""

from __future__ import annotations

import pytest

from peerd.node.driver import RoundDriver
from tests.sim import invariants
from tests.sim.spies import hide_records, watch_publishers
from tests.sim.world import EPOCH, Scenario, World

HIDDEN = (8.0, 20.0)  # loop time in which peer 1's reads miss peers 0, 2 and 3


def test_a_peer_whose_reads_miss_most_peers_publishes_no_rival_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    plans: dict[int, set[str]] = {}  # round -> ids of the plans its members ran
    original_round = RoundDriver.round
    published = watch_publishers(monkeypatch)  # round -> publishers
    hide_records(monkeypatch, ("peer-00", "peer-02", "peer-03"), HIDDEN, reader="peer-01")

    async def round_(self: RoundDriver, r: int) -> None:
        await original_round(self, r)
        if self.last_plan is not None and self.last_plan.round == r:
            plans.setdefault(r, set()).add(self.last_plan.plan_id)

    monkeypatch.setattr(RoundDriver, "round", round_)
    w = World(Scenario(seed=5, peers=5, duration_s=26.0, step_s=0.5, dht_delay_s=0.05))
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    round_s = w.cfg.round.round_s
    hidden = [r for r in sorted(plans) if HIDDEN[0] + 3.0 <= r * round_s - EPOCH < HIDDEN[1]]
    assert len(hidden) >= 4, plans
    assert all(len(plans[r]) == 1 for r in hidden), {r: (plans[r], published.get(r)) for r in hidden}
    assert all(len(published.get(r, ())) == 1 for r in hidden), {r: published.get(r) for r in hidden}
