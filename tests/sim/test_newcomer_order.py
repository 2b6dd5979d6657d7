"""A newcomer that holds a plan slot in a veteran's order does not leave the round without a plan.

A peer whose state was downloaded a round or two ago (a joiner) is no plan candidate: it would
rank by its own view, not by the commit its co-members share (``PlanElection._order``). It left
only itself out, though, and a veteran whose last commit is old orders the eligible peers of its
view, the newcomer among them. Where the newcomer and a peer that had just died took both
candidate slots, nobody published: the CI chaos test (tests/e2e/test_chaos.py) stalled 16 s,
the newcomer skipping every round and the veteran ranked third. A newcomer now says so in its
record, and peers ordering by their views leave it out too.

Here the rendezvous order is fixed so that the joiner comes first and the peer that dies
second. That peer is killed while the link between the other two is cut, so that their last
commit is old when the cut heals; its record lives on (a long ``dht.ttl_s``) and the joiner is
ready by then. On the code before, the three live peers skipped four rounds in a row for want
of a plan, until the joiner stopped counting as a newcomer.
"""

from __future__ import annotations

import pytest

from peerd.core import schedule as sch
from tests.sim import invariants
from tests.sim.spies import watch_publishers
from tests.sim.world import EPOCH, Event, Scenario, World

PRIORITY = ("peer-03", "peer-02", "peer-00", "peer-01")  # the joiner leads, the peer that dies comes next
CRASH, JOIN, HEAL = 8.0, 13.0, 14.3


def test_a_newcomer_and_a_dead_peer_in_both_candidate_slots_still_get_a_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sch, "rendezvous_score",
                        lambda run_id, r, pid: PRIORITY.index(pid) if pid in PRIORITY else len(PRIORITY))
    published = watch_publishers(monkeypatch)  # round -> publishers
    events = [Event(CRASH, "crash", 2), Event(CRASH, "cut", 0, other=1), Event(JOIN, "join", 3),
              Event(HEAL, "heal", 0, other=1)]
    w = World(Scenario(seed=3, peers=3, duration_s=26.0, events=events, config={"dht.ttl_s": 20}))
    w.checks.append(invariants.safety)
    w.run()
    round_s = w.cfg.round.round_s
    rows = {x.r: x.rows for x in w.log}
    # From the heal until the joiner is no newcomer any more: the dead peer's record is alive
    # throughout, so it holds its place in the veterans' order.
    held = [r for r in sorted(rows) if HEAL - 1.0 <= r * round_s - EPOCH < HEAL + 5.0]
    assert len(held) >= 3 and all("peer-03" in rows[r] for r in held), {r: rows[r] for r in held}
    assert all(len(published.get(r, ())) == 1 for r in held), {r: (rows[r], published.get(r)) for r in held}
    before = max(row[0] for row in rows[held[0]].values())
    assert any(row[0] > before for r in held for row in rows[r].values()), {r: rows[r] for r in held}
