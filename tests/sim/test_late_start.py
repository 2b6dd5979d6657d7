"""A joiner whose rounds start seconds after it announced itself ready still takes its part.

Others name a ready peer in their plans. A daemon announces itself ready, then finishes its
start-up (its addresses, another heartbeat, the ready file: DHT stores take several round trips
at 200 ms RTT), and only then starts its rounds. Its first round used to be the one current when
the round loop started, so it sat out the round it was named in, and that round aborted for
everyone (bench.wan_rounds, intercontinental: the first round with all four peers). Its first
round now follows its announcement (``RoundDriver.loop``).

Here the joiner's round loop starts 0.9 s after its ready record was stored, after the plan that
names it was published; on the code before, that round aborted for its three other members.
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
