"""RoundClock: the round-time arithmetic every phase of a round is read from."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.clock import PLAN_READ_FRACTION, RoundClock


class Fixed:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def clock(t: float = 0.0, round_s: float = 5.0) -> RoundClock:
    return RoundClock(round_s, 0.25, 0.25, 3, 0.9, Fixed(t))


@given(st.floats(1e6, 2e9), st.floats(0.5, 60))
@settings(max_examples=200, deadline=None)
def test_phases_are_ordered_inside_their_round(t: float, round_s: float) -> None:
    rc = RoundClock(round_s, 0.05 * round_s, 0.05 * round_s, 3, 0.9, Fixed(t))
    r = rc.index()
    assert rc.start(r) <= t < rc.start(r + 1)
    assert rc.start(r) < rc.settle_at(r) <= rc.publish_at(r, 0) < rc.publish_at(r, 1) <= rc.plan_give_up(r)
    assert rc.plan_give_up(r) < rc.deadline(r) < rc.catch_up_at(r) < rc.start(r + 1)
    assert rc.settle_at(r) <= rc.collect_deadline(r, rc.settle_at(r)) < rc.deadline(r)


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
