"""Round clock, rendezvous election, plan construction/validation and leader takeover."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core import schedule as sch

RUN, P, ROUND_S = "run", 3, 2.0


def cands(n: int, revision: int = 0, done: bool = False) -> list[sch.Candidate]:
    return [sch.Candidate(f"peer{i}", f"127.0.0.1:{5000 + i}", revision, "h", True, done) for i in range(n)]


def test_round_clock_and_fragment() -> None:
    assert sch.round_index(10.0, 2.0) == 5
    assert sch.round_index(11.999, 2.0) == 5
    assert sch.round_start(5, 2.0) == 10.0
    assert [sch.fragment_for_round(r, 3) for r in range(6)] == [0, 1, 2, 0, 1, 2]


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=20, unique=True), st.integers(0, 10**6))
@settings(max_examples=100, deadline=None)
def test_election_is_deterministic_and_view_order_independent(ids: list[str], r: int) -> None:
    a = sch.rendezvous_order(RUN, r, ids)
    b = sch.rendezvous_order(RUN, r, list(reversed(ids)))
    assert a == b and sorted(a) == sorted(ids)


def test_leader_rotates_across_rounds() -> None:
    ids = [f"peer{i}" for i in range(8)]
    leaders = {sch.rendezvous_order(RUN, r, ids)[0] for r in range(64)}
    assert len(leaders) >= 4


@given(st.integers(2, 12), st.integers(0, 10**6), st.data())
@settings(max_examples=60, deadline=None)
def test_equal_views_give_equal_plans(n: int, r: int, data: st.DataObject) -> None:
    view = cands(n)
    shuffled = data.draw(st.permutations(view))
    leader = sch.rendezvous_order(RUN, r, [c.peer_id for c in view])[0]
    a = sch.make_plan(RUN, r, P, leader, view, ROUND_S, 0.9, now=r * ROUND_S)
    b = sch.make_plan(RUN, r, P, leader, shuffled, ROUND_S, 0.9, now=r * ROUND_S)
    assert a is not None and a == b and a.plan_id == b.plan_id
    assert a.fragment == r % P and a.publisher_rank == 0 and set(a.members) == {c.peer_id for c in view}


def test_plan_excludes_peers_behind_or_off_majority() -> None:
    view = cands(4, revision=5)
    view.append(sch.Candidate("late", "x:1", 4, "h", True, False))
    view.append(sch.Candidate("forked", "x:2", 5, "other", True, False))
    view.append(sch.Candidate("notready", "x:3", 5, "h", False, False))
    plan = sch.make_plan(RUN, 7, P, "peer0", view, ROUND_S, 0.9, now=14.0)
    assert plan is not None
    assert set(plan.members) == {"peer0", "peer1", "peer2", "peer3"}
    for outsider in ("late", "forked", "notready"):
        assert plan.index_of(outsider) == -1
        # An outsider may not publish a plan either.
        assert sch.make_plan(RUN, 7, P, outsider, view, ROUND_S, 0.9, now=14.0) is None


def simulate_publication(view: list[sch.Candidate], r: int, silent: set[str], slot_s: float, candidates: int):
    """Walk time forward: candidate k publishes at its slot if it is alive and sees no plan."""
    order = sch.rendezvous_order(RUN, r, [c.peer_id for c in view])
    published: list[sch.RoundPlan] = []
    for rank, pid in enumerate(order[:candidates]):
        t = sch.publish_time(r, rank, ROUND_S, slot_s)
        if pid in silent or published:
            continue
        plan = sch.make_plan(RUN, r, P, pid, view, ROUND_S, 0.9, now=t)
        assert plan is not None
        published.append(plan)
    return order, sch.choose_plan(published)


def test_silent_leader_is_replaced_by_next_candidate() -> None:
    view, r = cands(5), 11
    order, plan = simulate_publication(view, r, silent=set(), slot_s=0.2, candidates=3)
    assert plan is not None and plan.publisher == order[0]
    order, plan = simulate_publication(view, r, silent={order[0]}, slot_s=0.2, candidates=3)
    assert plan is not None and plan.publisher == order[1] and plan.publisher_rank == 1
    order, plan = simulate_publication(view, r, silent=set(order[:3]), slot_s=0.2, candidates=3)
    assert plan is None  # nobody left to publish: the round is skipped, everyone keeps training


def test_choose_plan_prefers_best_rank_whatever_arrival_order() -> None:
    view = cands(4)
    order = sch.rendezvous_order(RUN, 3, [c.peer_id for c in view])
    p0 = sch.make_plan(RUN, 3, P, order[0], view, ROUND_S, 0.9, now=6.0)
    p1 = sch.make_plan(RUN, 3, P, order[1], view, ROUND_S, 0.9, now=6.2)
    assert p0 is not None and p1 is not None and p0.plan_id != p1.plan_id
    assert sch.choose_plan([p1, p0]) == p0 == sch.choose_plan([p0, p1])
    assert sch.choose_plan([]) is None


def test_final_flag_only_when_every_member_is_done() -> None:
    view = cands(3, done=True)
    assert sch.make_plan(RUN, 1, P, "peer0", view, ROUND_S, 0.9, now=2.0).final  # type: ignore[union-attr]
    view[1] = sch.Candidate("peer1", "x:1", 0, "h", True, False)
    assert not sch.make_plan(RUN, 1, P, "peer0", view, ROUND_S, 0.9, now=2.0).final  # type: ignore[union-attr]


def test_no_final_plan_while_a_done_peer_is_behind() -> None:
    # The laggard is not a member (it must resync first), and the plan is not final: the run's
    # last rounds wait for it, so it cannot end the run on a state of its own.
    view = cands(3, revision=5, done=True)
    view[2] = sch.Candidate("peer2", "x:2", 4, "h", True, True)
    plan = sch.make_plan(RUN, 1, P, "peer0", view, ROUND_S, 0.9, now=2.0)
    assert plan is not None and "peer2" not in plan.members and not plan.final
    # A peer that is not ready (still joining) neither blocks nor joins the final rounds.
    view[2] = sch.Candidate("peer2", "x:2", 4, "h", False, True)
    plan = sch.make_plan(RUN, 1, P, "peer0", view, ROUND_S, 0.9, now=2.0)
    assert plan is not None and plan.final


def test_plan_record_round_trip_and_validation() -> None:
    plan = sch.make_plan(RUN, 4, P, "peer0", cands(3), ROUND_S, 0.9, now=8.0)
    assert plan is not None
    assert sch.plan_from_record(plan.to_record(), RUN, P) == plan
    bad_cases = [
        {**plan.to_record(), "run_id": "other"},
        {**plan.to_record(), "fragment": 2},  # does not match round 4 mod 3
        {**plan.to_record(), "members": ["a", "a", "b"]},
        {**plan.to_record(), "endpoints": ["x"]},
        {**plan.to_record(), "publisher": "stranger"},
        {**plan.to_record(), "round": "4"},
        {**plan.to_record(), "extra": 1},
        {k: v for k, v in plan.to_record().items() if k != "deadline"},
        {**plan.to_record(), "collect_deadline": plan.deadline + 1},
        [1, 2, 3],
    ]
    for bad in bad_cases:
        with pytest.raises(sch.PlanError):
            sch.plan_from_record(bad, RUN, P)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=12),
                    max_leaves=30))
@settings(max_examples=200, deadline=None)
def test_plan_decoder_fuzz_never_crashes(record: object) -> None:
    try:
        plan = sch.plan_from_record(record, RUN, P)
    except sch.PlanError:
        return
    # Anything accepted is a consistent plan of this run that round-trips through its record.
    assert plan.run_id == RUN and (plan.paced or plan.fragment == sch.fragment_for_round(plan.round, P))
    assert sch.plan_from_record(plan.to_record(), RUN, P) == plan


def test_co_members_of_the_last_commit_count_as_committed_until_their_records_land() -> None:
    # 5 peers at revision 3; a plan of peers 0-3 committed; this peer (peer0) is now at 4/"h4".
    # Its view: peer1 already announced 4/"h4", peers 2-3 still show 3/"h" (their stores are late),
    # peer4 (not a member) shows 3/"h". Without the assumption only peer0 and peer1 are eligible.
    before = cands(5, revision=3)
    plan = sch.make_plan(RUN, 7, P, "peer0", before[:4], ROUND_S, 0.9, 14.0)
    assert plan is not None and plan.revision == 3
    view = [sch.Candidate("peer0", "e0", 4, "h4", True, False), sch.Candidate("peer1", "e1", 4, "h4", True, False),
            *before[2:]]
    assert [c.peer_id for c in sch.eligible(view)] == ["peer0", "peer1"]
    seen = sch.assume_committed(view, plan, 4, "h4")
    assert [c.peer_id for c in sch.eligible(seen)] == ["peer0", "peer1", "peer2", "peer3"]  # not peer4
    assert seen[4] == before[4]
    # A co-member whose record moved elsewhere (another hash, or a resync to another revision) is
    # left as it says; so is everyone once this peer's own state moved past the plan's outcome.
    other = [*view[:2], sch.Candidate("peer2", "e2", 3, "x", True, False), *view[3:]]
    moved = sch.eligible(sch.assume_committed(other, plan, 4, "h4"))
    assert [c.peer_id for c in moved] == ["peer0", "peer1", "peer3"]
    assert sch.assume_committed(view, plan, 5, "h5") == view
    assert sch.assume_committed(view, None, 4, "h4") == view


def test_co_members_a_view_read_missed_are_recalled_where_this_peer_is() -> None:
    # 5 peers at revision 3; a plan of peers 0-3 committed; this peer (peer0) is now at 4/"h4".
    # Its view read returned only itself, peer1 and peer4 (not a member): peers 2 and 3 come back
    # at 4/"h4", ready, with their endpoints and roles from the plan; nobody is added twice.
    before = cands(5, revision=3)
    plan = sch.make_plan(RUN, 7, P, "peer0", before[:4], ROUND_S, 0.9, 14.0)
    assert plan is not None
    view = [sch.Candidate("peer0", "e0", 4, "h4", True, False), sch.Candidate("peer1", "e1", 4, "h4", True, False),
            before[4]]
    seen = sch.recall_missing(view, plan, 4, "h4")
    assert seen[:3] == view
    back = {c.peer_id: c for c in seen[3:]}
    assert set(back) == {"peer2", "peer3"}
    for pid, c in back.items():
        i = plan.index_of(pid)
        assert (c.endpoint, c.revision, c.state_hash, c.ready, c.done) == (plan.endpoints[i], 4, "h4", True, False)
        assert c.reachable == (i < plan.owners)
    assert [c.peer_id for c in sch.eligible(seen)] == ["peer0", "peer1", "peer2", "peer3"]
    # Once this peer's state moved past the plan's outcome, or in gossip, nothing is recalled.
    assert sch.recall_missing(view, plan, 5, "h5") == view
