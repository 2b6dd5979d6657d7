"""A co-member that every view read misses is still named in the next plan, and commits.

On a loaded box a DHT read returns what the replicas that answered in time hold, and 16 daemons
on 2 cores read 11 to 14 of the same 16 peers in steady rounds: each plan left out the peers its
publisher's read had missed (34-58 member-rounds per 120 s run), though most of them had just
committed with it. The round driver now adds the co-members of the last round's commit that its
view lacks, where it is itself (``schedule.recall_missing``), unless their last record said they
were leaving (``SwarmView.departed``).

Here every read misses peer 0's record for a stretch of rounds; peer 0 must keep committing with
the others, in one state, through all of them.
"""

from __future__ import annotations

import pytest

from peerd.node.driver import RoundDriver
from tests.sim import invariants
from tests.sim.spies import hide_records
from tests.sim.world import EPOCH, Scenario, World

HIDDEN = (10.0, 30.0)  # loop time in which every read misses peer 0's record


def test_a_co_member_every_read_misses_keeps_committing(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, dict[str, str]] = {}
    original_round = RoundDriver.round
    hide_records(monkeypatch, ("peer-00",), HIDDEN)

    async def round_(self: RoundDriver, r: int) -> None:
        await original_round(self, r)
        seen.setdefault(r, {})[self.peer_id] = self.last_round.get("reason", "")

    monkeypatch.setattr(RoundDriver, "round", round_)
    w = World(Scenario(seed=7, peers=4, duration_s=40.0, step_s=0.5, dht_delay_s=0.05))
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    round_s = w.cfg.round.round_s
    # Rounds wholly inside the stretch, past the keep window of the records read before it.
    hidden = [r for r in sorted(seen) if HIDDEN[0] + 2 * round_s <= r * round_s - EPOCH < HIDDEN[1] - round_s]
    assert len(hidden) >= 2, seen
    assert all(seen[r].get("peer-00") == "ok" for r in hidden), {r: seen[r] for r in hidden}
    assert all(set(seen[r].values()) == {"ok"} for r in hidden), {r: seen[r] for r in hidden}
