"""RoundClock: the round-time arithmetic every phase of a round is read from."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.clock import PLAN_READ_FRACTION, SNAPSHOT_FLOOR_S, RoundClock
from tests.fakes import ManualClock


def clock(t: float = 0.0, round_s: float = 5.0) -> RoundClock:
    return RoundClock(round_s, 0.25, 0.25, 3, 0.9, ManualClock(t))


@given(st.floats(1e6, 2e9), st.floats(0.5, 60))
@settings(max_examples=200, deadline=None)
def test_phases_are_ordered_inside_their_round(t: float, round_s: float) -> None:
    rc = RoundClock(round_s, 0.05 * round_s, 0.05 * round_s, 3, 0.9, ManualClock(t))
    r = rc.index()
    assert rc.start(r) <= t < rc.start(r + 1)
    assert rc.start(r) < rc.settle_at(r) <= rc.publish_at(r, 0) < rc.publish_at(r, 1) <= rc.plan_give_up(r)
    assert rc.plan_give_up(r) < rc.deadline(r) < rc.catch_up_at(r) < rc.start(r + 1)
    assert rc.settle_at(r) <= rc.collect_deadline(r, rc.settle_at(r)) < rc.deadline(r)
    # Late reduced shards are taken until the next round reads its view, never into its plan.
    assert rc.deadline(r) < rc.start(r + 1) < rc.late_until(r, rc.deadline(r)) == rc.settle_at(r + 1)
    assert rc.late_until(r, rc.deadline(r)) < rc.publish_at(r + 1, 1)


def test_plan_reading_stops_at_the_read_fraction_of_the_exchange_window() -> None:
    rc = clock()
    assert rc.plan_give_up(10) == max(50 + 0.25 + 0.25 * 4, 50 + PLAN_READ_FRACTION * 0.9 * 5)


def test_a_peer_starting_before_the_settle_point_joins_the_current_round() -> None:
    assert clock().first_round(100.0 + 0.1) == 20  # early: our ready record may be in its plan
    assert clock().first_round(100.0 + 0.2) == 21  # too late for this round's plan


def test_pushes_wait_for_a_plan_only_for_rounds_near_now() -> None:
    rc = clock()
    assert rc.accepts_pushes_for(20, 100.5) and rc.accepts_pushes_for(21, 104.5)
    assert not rc.accepts_pushes_for(25, 100.5) and not rc.accepts_pushes_for(18, 100.5)


class _Measured:
    """A NetEstimate stand-in: measured round trips and a fast uplink of its own."""

    rtt_s = 0.02
    dht_s = 0.05

    def transfer_s(self, nbytes: int) -> float:
        return nbytes / 100e6


def _measured(t: float = 0.0, round_s: float = 10.0) -> RoundClock:
    return RoundClock(round_s, 0.25, 0.25, 3, 0.9, ManualClock(t), _Measured())  # type: ignore[arg-type]


def test_uncapped_rounds_keep_their_timing() -> None:
    for rc in (clock(), _measured()):
        for now in (50.0, 100.5):
            r = rc.index(now)
            assert rc.collect_deadline(r, now, 10_000, 0) == rc.collect_deadline(r, now, 10_000)
            assert rc.plan_give_up(r, 10_000, 0) == rc.plan_give_up(r, 10_000)
            assert rc.phase_s(10_000, 0) == rc.phase_s(10_000)


@given(st.floats(2_000, 200_000), st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_capped_contribution_gets_its_time_when_the_round_holds_it(cap: float, owner: bool, measured: bool) -> None:
    rc = _measured() if measured else clock(round_s=10.0)
    nbytes, r, now = 10_000, 10, 100.4
    out = cap if owner else 0.0
    collect = rc.collect_deadline(r, now, nbytes, cap, out)
    assert now <= collect <= rc.deadline(r)
    need_in, need_out = rc.capped_s(nbytes, cap), rc.capped_s(nbytes, out)
    assert need_in >= nbytes / cap  # never less than the bytes take at the cap
    if need_in + need_out <= rc.deadline(r) - now:
        assert collect - now >= need_in - 1e-9  # the capped contribution fits before collection closes
        assert rc.deadline(r) - collect >= need_out - 1e-9  # and a capped owner's reduced shard after it
    else:  # does not fit: the window is shared in proportion, and the round says so (cap_fits)
        assert not rc.cap_fits(nbytes, cap, out) or now > rc.settle_at(r)
        assert abs((collect - now) / (rc.deadline(r) - now) - need_in / (need_in + need_out or rc.window())) < 0.5
    assert rc.plan_give_up(r, nbytes, cap) <= rc.plan_give_up(r, nbytes)  # a capped reader stops sooner


def test_cap_fix_names_a_round_length_that_fits() -> None:
    rc = _measured(round_s=2.0)
    nbytes, cap = 60_000, 20_000.0  # 3 s at the cap: no 2 s round holds it
    assert not rc.cap_fits(nbytes, cap)
    longer = rc.round_s_for_cap(nbytes, cap)
    assert longer > 6.0
    assert RoundClock(longer, 0.25, 0.25, 3, 0.9, ManualClock(0.0), _Measured()).cap_fits(nbytes, cap)  # type: ignore[arg-type]


class _SlowDht(_Measured):
    dht_s = 0.8  # a view read on a loaded box: 16 daemons on 2 cores measured 0.7-1.2 s


def test_candidate_slots_start_after_the_view_read_and_the_leader_keeps_its_own() -> None:
    fast, slow = _measured(), RoundClock(5.0, 0.25, 0.25, 3, 0.9, ManualClock(0.0), _SlowDht())  # type: ignore[arg-type]
    r = 20
    for rc in (fast, slow):
        read = rc.read_s()
        assert 0 < read <= 0.2 * rc.window()
        # The leader may publish once it has read the view; candidate k waits for the read and k slots.
        assert rc.publish_at(r, 0) == rc.settle_at(r)
        assert rc.publish_at(r, 1) == rc.settle_at(r) + read + rc.plan_slot()
        # A leader whose read took the measured time is still inside its slot.
        assert rc.settle_at(r) + read < rc.publish_at(r, 1)
        assert rc.publish_at(r, rc.plan_candidates) < rc.plan_give_up(r) < rc.deadline(r)
    assert slow.read_s() == 0.2 * slow.window()  # capped: 0.9 s of a 4.5 s window, not 1.25 x 0.8 s


def test_candidate_turns_count_from_the_candidates_own_read_when_it_ends_late() -> None:
    rc = RoundClock(5.0, 0.25, 0.25, 3, 0.9, ManualClock(0.0), _SlowDht())  # type: ignore[arg-type]
    r, slot = 20, rc.plan_slot()
    quick = rc.settle_at(r) + 0.1  # a read well inside the clock's read_s: the clock's turns stand
    for k in range(rc.plan_candidates + 1):
        assert rc.turn(r, k, quick) == rc.publish_at(r, k)
    # A read that ended past the capped read_s (the leader's took as long): k slots after its end.
    late = rc.settle_at(r) + rc.read_s() + 0.3
    assert rc.turn(r, 0, late) == rc.settle_at(r)
    for k in (1, 2, 3):
        assert rc.turn(r, k, late) == late + k * slot > rc.publish_at(r, k)
    # Readers take candidate k's plan as final at candidate k + 1's turn; the leader's at once.
    assert rc.settled_after(r, 0, late) == rc.start(r)
    assert rc.settled_after(r, 1, late) == rc.turn(r, 2, late)
    assert rc.turn(r, rc.plan_candidates, late) < rc.plan_give_up(r)


def test_an_owner_waits_for_its_snapshot_even_when_its_push_estimate_leaves_no_time() -> None:
    rc = _measured(t=100.0)  # rtt 0.02 s
    assert rc.snapshot_wait(102.0, 0.5, owner=True) == pytest.approx(1.5)  # the estimate leaves time: as before
    # A pessimistic estimate (2.5 s of pushes, 2 s left) used to leave 10 ms, less than a step.
    assert rc.snapshot_wait(102.0, 2.5, owner=True) == pytest.approx(SNAPSHOT_FLOOR_S)
    assert rc.snapshot_wait(102.0, 2.5, owner=False) == pytest.approx(0.01)  # a client's proof must go now
    # Never past a round trip before the collection closes.
    assert rc.snapshot_wait(100.1, 2.5, owner=True) == pytest.approx(0.08)
    assert rc.snapshot_wait(99.0, 2.5, owner=True) == pytest.approx(0.01)
