"""A peer is named only in rounds it takes part in: a ready record says from which round on.

A peer whose round loop starts after a round's first half-settle sits that round out
(``RoundClock.first_round``), yet it announced itself ready as soon as it had synced, in the
middle of that round. On the emulated intercontinental link (200 ms RTT) the others read their
views until about 1 s into a round, saw it ready, named it, and the round aborted for want of
its shards: every abort of ``bench.wan_rounds --profile intercontinental`` with clock rounds was
in the first round with joiners. Its record now carries the round its loop starts with
(``from_round``) until that round, and plans of earlier rounds leave it out.

The simulated DHT returns a read's records as they were when the read began, so the abort itself
does not show here; what is checked is its cause, on every heartbeat of every peer: a record
that says ready in a round the peer's driver does not run tells the others to leave it out.
"""

from __future__ import annotations

from typing import Any

import pytest

from peerd.core.clock import RoundClock
from peerd.net.peer_record import PeerRecord
from peerd.net.view import SwarmView
from peerd.node.driver import RoundDriver
from peerd.node.election import PlanElection
from tests.sim import invariants
from tests.sim.world import Event, Scenario, World


def test_a_ready_record_in_a_round_its_peer_sits_out_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict[int, set[int]] = {}  # id(view) -> rounds its driver ran
    clocks: dict[int, RoundClock] = {}  # id(view) -> its driver's round clock
    beats: dict[int, list[tuple[float, PeerRecord]]] = {}  # id(view) -> (its clock's time, ready record)
    named: list[tuple[int, tuple[str, ...]]] = []  # (round, members) of every plan published
    original_round, original_beat, original_publish = RoundDriver.round, SwarmView.heartbeat, PlanElection._publish

    async def round_(self: RoundDriver, r: int) -> None:
        ran.setdefault(id(self.view), set()).add(r)
        clocks[id(self.view)] = self.rc
        await original_round(self, r)

    async def heartbeat(self: SwarmView, ready: bool | None = None, ttl_s: float | None = None) -> Any:
        record = self.my_record(ready)
        if record.ready:
            beats.setdefault(id(self), []).append((self.clock.time(), record))
        return await original_beat(self, ready, ttl_s)

    def publish(self: PlanElection, r: int, *args: Any) -> Any:
        plan = original_publish(self, r, *args)
        if plan is not None:
            named.append((r, tuple(plan.members)))
        return plan

    monkeypatch.setattr(RoundDriver, "round", round_)
    monkeypatch.setattr(PlanElection, "_publish", publish)
    monkeypatch.setattr(SwarmView, "heartbeat", heartbeat)
    sat_out = 0
    for k in range(10):  # joins spread over a round, so that some become ready after its half-settle
        w = World(Scenario(seed=k, peers=4, duration_s=20.0, events=[Event(10.0 + 0.2 * k, "join", 3)]))
        ran.clear()
        beats.clear()
        named.clear()
        w.checks.append(invariants.safety)
        w.run()
        assert len(beats) == 4 and all(len(r) > 3 for r in ran.values())
        for view, seen in beats.items():
            for t, record in seen:
                q = clocks[view].index(t)
                if q not in ran[view]:
                    sat_out += 1
                    assert record.from_round > q, (k, record.peer_id, q, sorted(ran[view])[:3])
        # Nobody crashes here: every peer a plan names runs that round.
        runs = {seen[0][1].peer_id: ran[view] for view, seen in beats.items()}
        for r, members in named:
            assert all(r in runs[m] for m in members), (k, r, [m for m in members if r not in runs[m]])
    assert sat_out > 0  # the scenarios do reach the case: ready records in a round the peer sat out
