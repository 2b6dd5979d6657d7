"""A peer whose rounds start after a round's settle point still takes part in that round.

Others name a ready peer in plans built from view reads that end up to a second after the
settle point (200 ms RTT). A peer's first round used to be the current one only when its loop
started within half the settle time of the round's start, else the next; a joiner that became
ready a moment later was named in the current round's plan, sat it out, and the round aborted
for every member (bench.wan_rounds, intercontinental: the first round with all four peers, in
several runs). Its first round is now the current one until that round's exchange is over
(``RoundClock.first_round``).

Here the joiner's round loop starts 0.9 s after its ready record was stored, after the plan
that names it was published; on the code before, that round aborted for its three other members.
"""

from __future__ import annotations

import asyncio

import pytest

from peerd.node.driver import RoundDriver
from peerd.node.peer import PeerNode
from tests.sim import invariants
from tests.sim.world import EPOCH, Event, Scenario, World

JOIN, START_UP_S = 10.0, 0.9


def test_a_joiner_named_before_its_rounds_start_takes_part(monkeypatch: pytest.MonkeyPatch) -> None:
    original, count = PeerNode.become_ready, RoundDriver._count
    outcomes: list[tuple[str, int, str]] = []  # (peer, round, outcome:reason) of every round counted

    async def become_ready(self: PeerNode) -> None:
        await original(self)
        if self.peer_id == "peer-03":  # the rest of a daemon's start-up, before its loops start
            await asyncio.sleep(START_UP_S)

    def count_(self: RoundDriver, outcome: str, reason: str) -> None:
        outcomes.append((self.peer_id, self.timing.get("round", -1), f"{outcome}:{reason}"))
        count(self, outcome, reason)

    monkeypatch.setattr(PeerNode, "become_ready", become_ready)
    monkeypatch.setattr(RoundDriver, "_count", count_)
    w = World(Scenario(seed=4, peers=3, duration_s=24.0, events=[Event(JOIN, "join", 3)]))
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    joined = (EPOCH + JOIN) // w.cfg.round.round_s  # the round the joiner announced itself in
    after = [(pid, r, what) for pid, r, what in outcomes if r >= joined]
    assert any(pid == "peer-03" and what == "committed:ok" for pid, _, what in after), after
    assert not [x for x in after if x[2].startswith("aborted")], after

