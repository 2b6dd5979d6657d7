"""Clocks and the round clock: every piece of round-time arithmetic, with an injectable ``now``.

The protocol never calls ``time.time()`` itself: it asks a :class:`Clock`. Real daemons use
:data:`SYSTEM`; the simulation tier (tests/sim) passes a virtual clock that follows its event
loop, so the same round driver and mixers run for N peers in one process on virtual time.

:class:`RoundClock` is a small frozen value: round ``r`` covers ``[r*round_s, (r+1)*round_s)``
of wall time and every phase of it (settle point, plan slots, how long a reader looks for a plan,
the exchange deadline, the laggard's catch-up point) is a method here, so a change of timing
policy is a change of this one type.

Phases are sized from what this peer measured of its network (:class:`~peerd.core.netstats.NetEstimate`:
round trips, DHT operation times, push throughput) and from the bytes a round moves; the
configured times are floors, so a loopback swarm keeps its short phases and a swarm over the
internet gets phases its round trips fit in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from peerd.core.config import RoundConfig
from peerd.core.netstats import NetEstimate


class Clock(Protocol):
    """Wall and monotonic time as one peer sees them."""

    def time(self) -> float:
        """Unix time in seconds (may be skewed between peers)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, expiries)."""


class SystemClock:
    """The process's real clocks."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


SYSTEM = SystemClock()

# Readers look for a round's plan until this fraction of the exchange window (round start to
# deadline) has passed; later than that a member could not contribute before collection closes.
PLAN_READ_FRACTION = 0.4
# A laggard fetches state this fraction of a round after the round's deadline (commits are done).
CATCH_UP_AFTER = 0.02
# Measured times are stretched by this much before they become a phase (jitter, a slower peer).
MARGIN = 1.25
# Share of the exchange window (after the plan) that reduced shards get at least, and the
# contributions' share when nothing is measured yet.
REDUCE_SHARE = 0.25
LOOPBACK_COLLECT_SHARE = 0.55
# The settle point comes at most this far into the exchange window.
MAX_SETTLE_FRACTION = 0.2
# Fixed slack per exchange phase (scheduling, decoding, the reduce itself).
PHASE_SLACK_S = 0.05
# A capped upload runs at its cap (the pacer is exact), so its time is stretched less than a measurement.
CAP_MARGIN = 1.1
# The least an owner waits for its worker's snapshot (a few training steps), whatever its push
# estimate says; see RoundClock.snapshot_wait.
SNAPSHOT_FLOOR_S = 0.3


@dataclass(frozen=True)
class RoundClock:
    """Round boundaries and phase times of the wall-clock round schedule."""

    round_s: float
    settle_s: float
    plan_slot_s: float
    plan_candidates: int
    deadline_fraction: float
    clock: Clock = SYSTEM
    net: NetEstimate = field(default_factory=NetEstimate)  # mutable: the peer's measurements so far

    @classmethod
    def from_config(cls, cfg: RoundConfig, clock: Clock = SYSTEM, net: NetEstimate | None = None) -> RoundClock:
        """The round clock a config describes, sized by ``net``'s measurements (default: none yet)."""
        return cls(cfg.round_s, cfg.settle_s, cfg.plan_slot_s, cfg.plan_candidates, cfg.deadline_fraction, clock,
                   net if net is not None else NetEstimate())

    def settle(self) -> float:
        """Seconds from a round's start to its settle point: a heartbeat store must land first.

        At most ``MAX_SETTLE_FRACTION`` of the exchange window, whatever was measured.
        """
        cap = max(self.settle_s, MAX_SETTLE_FRACTION * self.window())
        return min(cap, max(self.settle_s, MARGIN * (self.net.dht_s or 0.0)))

    def read_s(self) -> float:
        """Seconds the view read at the settle point takes (one DHT get): no candidate can publish before.

        Measured (``net.dht_s``, stretched by ``MARGIN``), at most ``MAX_SETTLE_FRACTION`` of the
        exchange window; 0 before anything is measured. Without it the plan slots began at the
        settle point itself: on a loaded box (a 1 s read) the leader and the next candidate were
        past their slots by the time they had read the view, never published, and every plan came
        from the last candidate, or from none when that one was behind.
        """
        return min(MAX_SETTLE_FRACTION * self.window(), MARGIN * (self.net.dht_s or 0.0))

    def plan_slot(self) -> float:
        """Seconds between plan candidates' turns: the better one's DHT read plus its offer's one-way hop.

        A candidate publishes only when no better-ranked plan reached it within its slots, so a
        slot shorter than that lets two candidates publish and the round split. The slots of all
        candidates end by half of the exchange window, whatever was measured.
        """
        measured = MARGIN * ((self.net.dht_s or 0.0) + 0.5 * (self.net.rtt_s or 0.0))
        cap = (0.5 * self.window() - self.settle() - self.read_s()) / (self.plan_candidates + 1)
        return max(self.plan_slot_s, min(cap, measured))

    def window(self) -> float:
        """Seconds from a round's start to its exchange deadline."""
        return self.deadline_fraction * self.round_s

    def pace_lead(self) -> float:
        """Seconds from a round's start (records published) to about when its members snapshot their workers.

        Work pacing (peerd/core/pace.py) projects the announced step counts over this lead.
        """
        return self.settle() + self.read_s() + self.plan_slot()

    def now(self) -> float:
        """Current Unix time of this peer."""
        return self.clock.time()

    def index(self, t: float | None = None) -> int:
        """Round containing Unix time ``t`` (default: now)."""
        return math.floor((self.now() if t is None else t) / self.round_s)

    def start(self, r: int) -> float:
        """Unix time at which round ``r`` starts."""
        return r * self.round_s

    def settle_at(self, r: int) -> float:
        """When the view for round ``r``'s plan is read: heartbeats of the round's start have landed."""
        return self.start(r) + self.settle()

    def deadline(self, r: int) -> float:
        """End of round ``r``'s exchange: members stop waiting for reduced shards."""
        return self.start(r) + self.deadline_fraction * self.round_s

    def late_until(self, r: int, deadline: float) -> float:
        """Until when round ``r``'s reduced shards may still arrive and commit it: the next round's settle point.

        A reduced shard still in flight at the plan's ``deadline`` (a slow link, a loaded owner) is
        late, not lost: members keep the round open (and pull what was not pushed to them), so the
        exchange runs on while the workers train, and a member that receives every shard commits
        like the others. Until the next round's views are read, not later: a member that commits
        by then is named in the next plan by the peers it committed with (their views take it to
        have committed: ``schedule.assume_committed``) and is in sync for it.
        """
        return max(deadline, self.settle_at(r + 1))

    def phase_s(self, nbytes: int, uplink_bps: float = 0.0) -> float:
        """Time one exchange phase needs when every member pushes ``nbytes`` in all through its uplink.

        ``uplink_bps``: the slowest member's announced upload cap in bytes/s (0: none); a capped
        member needs at least ``nbytes`` at its cap, whatever this peer measured of its own links.
        """
        measured = MARGIN * self.net.transfer_s(nbytes) + PHASE_SLACK_S
        return max(measured, self.capped_s(nbytes, uplink_bps))

    def capped_s(self, nbytes: int, uplink_bps: float) -> float:
        """Time ``nbytes`` take through an upload cap of ``uplink_bps`` bytes/s (0 when uncapped)."""
        if uplink_bps <= 0:
            return 0.0
        return CAP_MARGIN * nbytes / uplink_bps + MARGIN * (self.net.rtt_s or 0.0) + PHASE_SLACK_S

    def cap_fits(self, nbytes: int, uplink_bps: float, reduce_uplink_bps: float | None = None) -> bool:
        """Whether a round's exchange window (after its settle point) holds the capped phases.

        ``uplink_bps``: the slowest member's cap (its contribution); ``reduce_uplink_bps``: the
        slowest owner's (its reduced shard; None: the same, 0: no reduce phase to pace).
        """
        need = self.capped_s(nbytes, uplink_bps) + self.capped_s(nbytes, self._reduce_cap(uplink_bps,
                                                                                           reduce_uplink_bps))
        return need <= self.window() - self.settle()

    def round_s_for_cap(self, nbytes: int, uplink_bps: float, reduce_uplink_bps: float | None = None) -> float:
        """The shortest ``round_s`` whose window holds the capped phases (for the log line's fix)."""
        need = self.capped_s(nbytes, uplink_bps) + self.capped_s(nbytes, self._reduce_cap(uplink_bps,
                                                                                           reduce_uplink_bps))
        need += self.settle() + self.read_s() + (self.plan_candidates + 1) * self.plan_slot()
        return math.ceil(10 * need / self.deadline_fraction) / 10

    @staticmethod
    def _reduce_cap(uplink_bps: float, reduce_uplink_bps: float | None) -> float:
        return uplink_bps if reduce_uplink_bps is None else reduce_uplink_bps

    def snapshot_wait(self, collect_deadline: float, travel_s: float, owner: bool) -> float:
        """Seconds a member waits for its worker's snapshot: its contribution must still reach the owners.

        ``travel_s`` is its pushes' estimated time, from a low quantile of measured throughput, so
        pessimistic. Where it left no time, the wait was 10 ms, shorter than a training step, and
        the member contributed nothing (a weightless zero) round after round: at 200 ms RTT one
        peer did so in 7 consecutive rounds, and when its worker's snapshot finally came, 680
        steps of one shard, weighted by their samples, dominated the average (final eval loss
        1.974 against 1.832 and 1.854 for the same run's siblings; ``bench.rounds``, 2026-12-01).
        So an owner waits at least ``SNAPSHOT_FLOOR_S``, but not past a round trip before the
        collection closes. The price: where the estimate was right, the contribution comes late
        and owners drop it, and the member's progress on those shards is lost at the merge
        (a zero would have rebased and kept it). The streak was seen once in 120 peer-runs, so
        neither effect has been measured in the field. A client's contribution is its proof
        that it follows the plan (the round aborts without it), so a client never waits past
        the estimate.
        """
        left = collect_deadline - self.now()
        wait = left - travel_s
        if owner:
            wait = max(wait, min(SNAPSHOT_FLOOR_S, left - (self.net.rtt_s or 0.0)))
        return max(0.01, wait)

    def collect_deadline(self, r: int, now: float, nbytes: int = 0, uplink_bps: float = 0.0,
                         reduce_uplink_bps: float | None = None) -> float:
        """Owners stop waiting for contributions; the reduce phase gets what it needs of the rest.

        ``nbytes``: what one member pushes per phase (about a fragment's encoded size).
        Contributions need a worker's snapshot (up to a training step) besides their transfer,
        so they get every second the reduce phase does not need: twice its measured time, and
        at least ``REDUCE_SHARE`` of the window. Without measurements, the loopback split.

        Upload caps (bytes/s, 0: none) make capped members late, not dropped: ``uplink_bps`` is
        the slowest member's cap (its contribution must arrive), ``reduce_uplink_bps`` the slowest
        owner's (its reduced shard must; None: the same, 0: not paced, as in gossip). The split
        above moves just enough: later, so the capped contribution fits (down to twice the reduce
        phase's measured time), or earlier, so a capped owner's reduced shard does. When both do
        not fit (see :meth:`cap_fits`), the window is split between the two in proportion.
        """
        begin = max(self.start(r), now)
        window = max(0.0, self.deadline(r) - begin)
        measured = self.net.rtt_s is not None
        if not measured:
            base = begin + LOOPBACK_COLLECT_SHARE * window
        else:
            reduce_s = max(REDUCE_SHARE * window, 2 * self.phase_s(nbytes))
            base = begin + (max(0.5 * window, window - reduce_s) if window < 2 * reduce_s else window - reduce_s)
        cap_in = self.capped_s(nbytes, uplink_bps)
        cap_out = self.capped_s(nbytes, self._reduce_cap(uplink_bps, reduce_uplink_bps))
        if cap_in <= 0 and cap_out <= 0:
            return base
        # What the reduce phase cannot do without: its capped owner's time, twice its measured time
        # (the REDUCE_SHARE margin is given up only as far as a capped contribution needs it).
        reduce_min = max(cap_out, 2 * self.phase_s(nbytes) if measured else REDUCE_SHARE * window)
        if cap_in + reduce_min > window:
            return begin + window * cap_in / (cap_in + reduce_min)
        return begin + min(max(base - begin, cap_in), window - reduce_min)

    def publish_at(self, r: int, rank: int) -> float:
        """Earliest time candidate ``rank`` may publish a plan for round ``r``.

        The leader publishes as soon as it has read the view; candidate ``k`` after the read's
        measured time and ``k`` slots, so a leader whose read took that long is still in its slot.
        """
        if rank == 0:
            return self.settle_at(r)
        return self.settle_at(r) + self.read_s() + rank * self.plan_slot()

    def turn(self, r: int, rank: int, read_end: float) -> float:
        """When candidate ``rank`` may publish round ``r``'s plan, given that its own view read ended at ``read_end``.

        :meth:`publish_at`, but never earlier than ``rank`` slots after this peer's own read: on
        a loaded box a view read takes longer than the clock's ``read_s`` (capped at a fifth of
        the window), the leader publishes only after its own read, and a candidate counting its
        slots from the capped ``read_s`` published before the leader's offer could reach it
        (16 daemons on 2 cores: the leader at 1.94-2.03 s, candidate 1 at 2.05-2.10 s, a split
        round). Every peer reads the same key at the same settle point, so its own read's end
        stands in for the leader's.
        """
        if rank == 0:
            return self.publish_at(r, 0)
        return max(self.publish_at(r, rank), read_end + rank * self.plan_slot())

    def defer_s(self) -> float:
        """How much later a candidate publishes when a better-ranked peer is alive and in sync.

        That peer is reading the view and will publish; its read may take the full measured DHT
        time (uncapped here, unlike :meth:`read_s`) and its offer a slot more to arrive. Only a
        crash after its heartbeat leaves the round to this candidate, so the candidate gives
        way for that long rather than split the round.
        """
        return max(self.plan_slot(), MARGIN * (self.net.dht_s or 0.0))

    def settled_after(self, r: int, rank: int, read_end: float) -> float:
        """When a reader whose view read ended at ``read_end`` takes a rank-``rank`` plan as final.

        The leader's at once; candidate ``k``'s at candidate ``k + 1``'s :meth:`turn`, as a
        better-ranked plan may have been published just before it and still be on its way.
        """
        return self.start(r) if rank == 0 else self.turn(r, rank + 1, read_end)

    def plan_give_up(self, r: int, nbytes: int = 0, uplink_bps: float = 0.0) -> float:
        """Readers stop looking for round ``r``'s plan at this time (a member could not contribute after).

        ``uplink_bps``: this reader's own upload cap (bytes/s, 0: none): its contribution must
        still cross its link after it reads the plan, so it stops looking that much earlier
        (never before the last candidate's slot: a plan found then is still worth a try).
        """
        last_slot = self.publish_at(r, self.plan_candidates + 1)
        loopback = self.start(r) + PLAN_READ_FRACTION * self.deadline_fraction * self.round_s
        if self.net.rtt_s is None:
            give_up = max(last_slot, loopback)
        else:
            give_up = max(last_slot, loopback, self.deadline(r) - 2 * self.phase_s(nbytes))
        capped = self.capped_s(nbytes, uplink_bps)
        return max(last_slot, min(give_up, self.deadline(r) - 2 * capped)) if capped > 0 else give_up

    def catch_up_at(self, r: int) -> float:
        """When a laggard fetches what round ``r``'s members committed (just after its deadline)."""
        return self.deadline(r) + CATCH_UP_AFTER * self.round_s

    def accepts_pushes_for(self, r: int, now: float) -> bool:
        """Whether a push for round ``r`` may wait here for its plan (only rounds near the current one)."""
        return now - self.round_s <= self.start(r) <= now + 1.0

    def first_round(self, now: float) -> int:
        """The round a peer that starts its loop at ``now`` takes part in first.

        Before the current round's settle point this peer's ready record may be in the views
        others read, so they may name it in the plan: taking part beats making the round abort.
        """
        r = self.index(now)
        return r if now < self.start(r) + self.settle_s * 0.5 else r + 1
