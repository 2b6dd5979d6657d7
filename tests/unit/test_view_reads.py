"""A view read that misses live records (replicas that did not answer in time) keeps them until they expire.

On 16 daemons on 2 cores the reads of one round returned between 7 and 12 of the same 16 peers;
each reader built a different plan and several took themselves for the round's leader.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from peerd.net.peer_record import PeerRecord
from peerd.net.view import KEEP_MISSED_BEATS, KEEP_MISSED_READS, SwarmView
from tests.fakes import ManualClock

HEARTBEAT_S = 1.0


class _Reads:
    """Answers each read with the next dict given (None: the lookup failed)."""

    invalid_records = 0

    def __init__(self) -> None:
        self.next: dict[str, PeerRecord] | None = {}

    async def live_records(self) -> dict[str, PeerRecord] | None:
        return None if self.next is None else dict(self.next)


class _Net:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    async def forget(self, endpoints: list[str]) -> None:
        self.forgotten += endpoints


def _rec(pid: str, expires: float, revision: int = 1) -> PeerRecord:
    return PeerRecord(pid, f"198.18.0.{len(pid)}:{5000 + ord(pid[0])}", 1, revision, "h", ("a",), 1.0, 3, True, False,
                      expires=expires)


def _view() -> tuple[SwarmView, _Reads, _Net, ManualClock]:
    reads, net, clock = _Reads(), _Net(), ManualClock(1000.0)
    view = SwarmView("me", "198.18.0.1:5000", 1, reads, net, None, lambda: None, clock,  # type: ignore[arg-type]
                     HEARTBEAT_S, 10.0, [], lambda: None, lambda live, invalid: None)
    return view, reads, net, clock


def _read(view: SwarmView, reads: _Reads, *records: PeerRecord) -> set[str]:
    reads.next = {r.peer_id: r for r in records}
    return set(asyncio.run(view.refresh()))


def test_a_record_one_read_missed_stays_until_it_expires() -> None:
    view, reads, net, clock = _view()
    a, b = _rec("a", clock.t + 4), _rec("b", clock.t + 1.5)
    assert _read(view, reads, a, b) == {"a", "b"}
    clock.t += 1.0
    assert _read(view, reads) == {"a", "b"} and not net.forgotten and not view.lost  # both still alive
    clock.t += 0.6  # b's copy has expired: gone, as a read that reached it would say
    assert _read(view, reads) == {"a"} and net.forgotten == [b.endpoint] and "b" in view.lost


def test_a_record_missed_for_two_heartbeats_and_two_reads_is_dropped_before_its_expiry() -> None:
    view, reads, net, clock = _view()
    a = _rec("a", clock.t + 60)  # a long-lived copy (or an unknown expiry) is not kept for ever
    _read(view, reads, a)
    for _ in range(KEEP_MISSED_READS):  # slow reads (a loaded box): far apart, each misses it
        clock.t += KEEP_MISSED_BEATS * HEARTBEAT_S + 1.0
        assert _read(view, reads) == {"a"}
    clock.t += 0.1
    assert _read(view, reads) == set() and net.forgotten == [a.endpoint]
    assert _read(view, reads, replace(a, expires=float("inf"))) == {"a"}  # read again: back at once


def test_quick_reads_keep_a_missed_record_for_two_heartbeats() -> None:
    view, reads, net, clock = _view()
    a = _rec("a", clock.t + 60)
    _read(view, reads, a)
    for _ in range(2 * KEEP_MISSED_READS):  # reads much quicker than heartbeats: the time bound holds
        clock.t += 0.3
        assert _read(view, reads) == {"a"}
    clock.t += KEEP_MISSED_BEATS * HEARTBEAT_S
    assert _read(view, reads) == set() and net.forgotten == [a.endpoint]


def test_a_fresh_copy_replaces_the_kept_one_and_a_failed_lookup_keeps_the_view() -> None:
    view, reads, _, clock = _view()
    _read(view, reads, _rec("a", clock.t + 4), _rec("b", clock.t + 4))
    clock.t += 1.0
    _read(view, reads, _rec("a", clock.t + 4, revision=2))
    assert view.records["a"].revision == 2 and view.records["b"].revision == 1
    reads.next = None
    assert set(asyncio.run(view.refresh())) == {"a", "b"}
    # The missed record's clock runs from the read that last returned it, not from the kept copy.
    clock.t += KEEP_MISSED_BEATS * HEARTBEAT_S - 0.5
    assert _read(view, reads, _rec("a", clock.t + 4, revision=2)) == {"a", "b"}  # missed twice: kept
    assert _read(view, reads, _rec("a", clock.t + 4, revision=2)) == {"a"}  # a third miss, past the time bound


def test_a_ready_peer_reads_in_the_heartbeat_loop_only_when_its_rounds_have_not() -> None:
    """Each read returns every record from each replica: a ready peer's round driver reads every
    round, so the heartbeat loop adds a read only when none ended in ``ready_read_s``; a joiner
    (not ready) picks donors from the view and reads every heartbeat."""
    view, reads, _, clock = _view()
    view.ready_read_s = 6.0
    assert view.read_due()  # not ready
    view.ready = True
    assert view.read_due()  # ready, never read
    _read(view, reads, _rec("a", clock.t + 4))
    clock.t += 5.9
    assert not view.read_due()
    clock.t += 0.1
    assert view.read_due()
    view.ready = False
    _read(view, reads)
    assert view.read_due()
    reads.next = None  # a failed read does not count as one
    view.ready = True
    clock.t += 10.0
    asyncio.run(view.refresh())
    assert view.read_due()
