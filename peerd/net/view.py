"""Swarm view: this peer's heartbeat record, the live records it reads, suspects and re-pinging.

One owner for "who is out there": the round driver asks it for candidates, the mixers for
donors and partners. Everything here runs on the loop thread; time comes from the injected
clock, so the simulation tier drives the same code on virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from peerd.core import schedule as sch
from peerd.core.bridge import WorkerStats
from peerd.core.clock import Clock
from peerd.core.log import get_logger
from peerd.core.state import OuterState
from peerd.net.peer_record import PeerRecord
from peerd.net.ports import MembershipPort, NetworkPort

log = get_logger("peerd.view")
# Peers that left the view are pinged every REPING_EVERY_S for REPING_FOR_S (see reping_loop).
REPING_EVERY_S, REPING_FOR_S = 5.0, 300.0
# A record a read missed is kept for at most this many heartbeats after a read last returned it,
# or through this many reads in a row that missed it, whichever is longer (and never past its DHT
# expiry): a live peer rewrites its record every heartbeat. The count is what a loaded box needs:
# there a read takes about a second and the heartbeat loop reads every 2-3 s, so a time bound of
# two heartbeats dropped a record at the first read that missed it.
KEEP_MISSED_BEATS = 2
KEEP_MISSED_READS = 2


def maddrs_on_host(maddrs: Iterable[str], endpoint: str) -> tuple[str, ...]:
    """Those of ``maddrs`` on the host of the gRPC ``endpoint`` (host:port), the only ones dialled."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return tuple(a for a in maddrs if a.split("/")[2:3] == [host])


def dialable_maddrs(rec: PeerRecord) -> tuple[str, ...]:
    """The record's DHT addresses that :meth:`SwarmView.knit` dials."""
    return maddrs_on_host(rec.dht_maddrs, rec.endpoint)


class SwarmView:
    """Heartbeats, the live view, suspects and keeping the DHT knitted."""

    def __init__(self, peer_id: str, endpoint: str, incarnation: int, membership: MembershipPort,
                 network: NetworkPort, state: OuterState, stats: Callable[[], WorkerStats], clock: Clock,
                 heartbeat_s: float, suspect_s: float, bootstrap: list[str],
                 on_lost_ready: Callable[[], None], on_refresh: Callable[[int, int], None],
                 announce_pace: bool = False, ready_read_s: float = 0.0) -> None:
        """``suspect_s``: how long a member that failed a round stays out of the plans this peer publishes.

        ``on_lost_ready()`` runs when a ready peer leaves the view (a failure, for recovery time);
        ``on_refresh(live_peers, invalid_records)`` after every refresh (metrics). ``announce_pace``:
        records carry the worker's throughput and steps since each fragment's sync (work-paced rounds).
        ``ready_read_s``: while this peer is ready, the heartbeat loop reads the view only when no read
        ended in this long (the round driver reads it every round); 0: every heartbeat.
        """
        self.peer_id, self.endpoint, self.incarnation = peer_id, endpoint, incarnation
        self.membership, self.network, self.state, self.stats, self.clock = membership, network, state, stats, clock
        self.heartbeat_s, self.suspect_s, self.bootstrap = heartbeat_s, suspect_s, bootstrap
        self.on_lost_ready, self.on_refresh = on_lost_ready, on_refresh
        self.announce_pace, self.ready_read_s = announce_pace, ready_read_s
        self.read_at = -1e9  # when a read of the live records last succeeded (monotonic)
        self.records: dict[str, PeerRecord] = {}  # other live peers, by id
        self.ready = False  # synced and willing to join rounds
        self.reachable = True  # others can dial this peer (peerd/net/reach.py decides; False: client mode)
        self.uplink_bps = 0  # this peer's upload cap in bytes/s, announced so rounds allow for it (0: none)
        self.dht_maddrs: tuple[str, ...] = ()  # this peer's DHT addresses, announced so others dial them (knit)
        # The round driver's answer to whether this peer's state was downloaded from others a round
        # or two ago (announced: such a peer leads no round; peerd/node/election.py).
        self.newcomer: Callable[[], bool] = lambda: False
        self.from_round: Callable[[], int] = lambda: 0  # set by the round driver (RoundDriver.start_round)
        self._dialed: dict[str, tuple[tuple[str, ...], bool, float]] = {}  # peer id -> (addresses, answered, when)
        # peer id -> (monotonic expiry, incarnation, step) of members that failed a round
        self.suspects: dict[str, tuple[float, int, int]] = {}
        self.lost: dict[str, float] = {}  # peer id -> when a ready member left the view (monotonic)
        self._read_at: dict[str, float] = {}  # peer id -> when a read last returned its record (monotonic)
        self._missed: dict[str, int] = {}  # peer id -> reads in a row that missed its (kept) record
        # Peers whose last record read said they are leaving or done (not ready, or done): the
        # round driver does not take them back into a plan when a read misses them (recall).
        self.departed: set[str] = set()
        self._was_alone = False

    def my_record(self, ready: bool | None = None) -> PeerRecord:
        """This peer's heartbeat record now."""
        stats = self.stats()
        return PeerRecord(
            peer_id=self.peer_id, endpoint=self.endpoint, incarnation=self.incarnation,
            revision=self.state.revision, state_hash=self.state.state_hash(),
            fragment_hashes=self.state.fragment_hashes, samples_per_s=stats.samples_per_s, step=stats.step,
            ready=self.ready if ready is None else ready, done=stats.done, reachable=self.reachable,
            steps_per_s=stats.steps_per_s if self.announce_pace else 0.0,
            steps_since=self._steps_since(stats.steps_since) if self.announce_pace else None,
            uplink_bps=self.uplink_bps, dht_maddrs=self.dht_maddrs, newcomer=self.newcomer(),
            from_round=self.from_round(),
        )

    def _steps_since(self, since: tuple[int, ...]) -> tuple[int, ...]:
        """One count per fragment (zeros before the worker's first step)."""
        nf = self.state.layout.num_fragments
        return since if len(since) == nf else (0,) * nf

    def slowest_uplink(self, peer_ids: Iterable[str]) -> int:
        """The lowest announced upload cap (bytes/s) among ``peer_ids`` (this peer included); 0: none capped."""
        caps = [self.uplink_bps if pid == self.peer_id else getattr(self.records.get(pid), "uplink_bps", 0)
                for pid in peer_ids]
        return min((c for c in caps if c > 0), default=0)

    async def heartbeat(self, ready: bool | None = None, ttl_s: float | None = None) -> bool:
        """Publish this peer's record."""
        return await self.membership.heartbeat(self.my_record(ready), ttl_s)

    async def refresh(self) -> dict[str, PeerRecord]:
        """Read the live records (a failed lookup keeps the previous view; see :meth:`_keep_missed`)."""
        records = await self.membership.live_records()
        if records is not None:
            self.read_at = self.clock.monotonic()
            records.pop(self.peer_id, None)
            self._keep_missed(records)
            for pid, rec in records.items():
                if rec.ready and not rec.done:
                    self.departed.discard(pid)
                else:
                    self.departed.add(pid)
            if len(self.departed) > 4 * (len(records) + 16):  # bounded: ids of long-gone peers are dropped
                self.departed &= set(records)
            gone = [r.endpoint for pid, r in self.records.items() if pid not in records]
            now = self.clock.monotonic()
            # Only members that vanished mid-run: a peer done with its steps or announcing its
            # departure (ready=False) left on purpose, and pinging it would only fail.
            self.lost.update({pid: now for pid, r in self.records.items()
                              if pid not in records and r.ready and not r.done})
            for pid in records:
                self.lost.pop(pid, None)
            if any(r.ready for pid, r in self.records.items() if pid not in records):
                self.on_lost_ready()
            self.records = records
            if gone:
                await self.network.forget(gone)
        self.on_refresh(len(self.records) + 1, self.membership.invalid_records)
        return self.records

    def _keep_missed(self, records: dict[str, PeerRecord]) -> None:
        """Add to a fresh read the records it missed that are still alive (in place).

        A lookup on a loaded box returns what the replicas that answered in time hold: 16 daemons
        on 2 cores saw from 7 to 12 of the same 16 peers in one round's reads, so each built a
        different plan, several took themselves for the leader, and the rounds split. A record
        lives in the DHT until its expiry whether a read reaches it or not, so one a read missed
        stays in the view until then, and at most ``KEEP_MISSED_BEATS`` heartbeats after a read
        last returned it or ``KEEP_MISSED_READS`` reads in a row that missed it, whichever is
        longer. A crashed peer leaves the view when its record expires, as before; one that
        announced its departure is in the view as not ready.
        """
        now, mono = self.clock.time(), self.clock.monotonic()
        for pid in records:
            self._read_at[pid] = mono
            self._missed.pop(pid, None)
        keep_s = KEEP_MISSED_BEATS * self.heartbeat_s
        for pid, rec in self.records.items():
            if pid in records or rec.expires <= now:
                continue
            missed = self._missed[pid] = self._missed.get(pid, 0) + 1
            if missed <= KEEP_MISSED_READS or mono - self._read_at.get(pid, -keep_s) < keep_s:
                records[pid] = rec
        for pid in [p for p in self._read_at if p not in records]:
            del self._read_at[pid]
        for pid in [p for p in self._missed if p not in records]:
            del self._missed[pid]

    # ---- what the round driver asks ----

    def candidates(self) -> list[sch.Candidate]:
        """Every live peer as a schedule candidate, this one included."""
        return [rec.candidate() for rec in self.records.values()] + [self.my_record().candidate()]

    def unsuspected(self, candidates: list[sch.Candidate], keep: frozenset[str] = frozenset()) -> list[sch.Candidate]:
        """``candidates`` less the members this peer suspects, but those in ``keep`` (for plans it publishes)."""
        return [c for c in candidates
                if c.peer_id == self.peer_id or c.peer_id in keep or not self._suspected(c.peer_id)]

    def suspect(self, peer_ids: tuple[str, ...]) -> None:
        """Leave members that failed a round out of the plans this peer publishes, for a while.

        A SIGKILLed peer's record stays in the DHT until its TTL runs out; without this every
        plan until then would name it again and abort again. A suspect is readmitted as soon as
        its record moves (a slow but live peer keeps training, so its step advances) or after
        ``suspect_s``, when a dead peer's record has expired anyway.
        """
        until = self.clock.monotonic() + self.suspect_s
        for pid in peer_ids:
            rec = self.records.get(pid)
            if pid != self.peer_id and rec is not None:
                self.suspects[pid] = (until, rec.incarnation, rec.step)

    def _suspected(self, peer_id: str) -> bool:
        entry, rec = self.suspects.get(peer_id), self.records.get(peer_id)
        if entry is None or rec is None:
            return False
        until, incarnation, step = entry
        if self.clock.monotonic() >= until or (rec.incarnation, rec.step) != (incarnation, step):
            del self.suspects[peer_id]
            return False
        return True

    # ---- loops ----

    async def knit(self) -> int:
        """Dial the DHT node of every live peer this peer has no direct connection to yet; returns how many.

        Without it, p2pd reaches peers whose addresses libp2p's discovery dropped through a relay,
        which is the bootstrap peer: at 16 daemons in the WAN emulator it carried every DHT call
        and sent 11x the bytes of any other peer. Only addresses on the host of the record's own
        endpoint are dialled, so a record cannot aim the swarm's dials at a third party. A dial
        that failed is tried again after ``REPING_EVERY_S``; one that worked is not repeated while
        the peer stays in the view with the same addresses.
        """
        now = self.clock.monotonic()
        for pid in [p for p in self._dialed if p not in self.records]:
            del self._dialed[pid]
        due: dict[str, tuple[str, ...]] = {}
        for pid, rec in self.records.items():
            addrs = dialable_maddrs(rec)
            seen = self._dialed.get(pid)
            if not addrs or not rec.reachable:
                continue
            if seen is None or seen[0] != addrs or (not seen[1] and now - seen[2] >= REPING_EVERY_S):
                due[pid] = addrs
        if not due:
            return 0
        answered = set(await self.membership.connect([a for addrs in due.values() for a in addrs]))
        for pid, addrs in due.items():
            self._dialed[pid] = (addrs, pid in answered, now)
        return len(due)

    async def heartbeat_loop(self, check: Callable[[], None]) -> None:
        """Heartbeat and refresh every ``heartbeat_s``; ``check()`` raises to stop the peer."""
        while True:
            check()
            await self.heartbeat()
            if self.read_due():
                await self.refresh()
            await asyncio.sleep(self.heartbeat_s)

    def read_due(self) -> bool:
        """Whether the heartbeat loop reads the view now.

        Every heartbeat while this peer is not ready: a joiner picks its donors from this view
        between rounds (reading it once per round left a restarted joiner retrying a dead donor:
        sim seed 423). A ready peer's round driver reads it every round, and each read returns
        every record from each of the key's replicas, so a second read per heartbeat multiplied
        the control plane's bytes by the heartbeats in a round; it reads here only when the
        driver has not for ``ready_read_s`` (a round held up by a long exchange).
        """
        return not self.ready or self.clock.monotonic() - self.read_at >= self.ready_read_s

    async def reping_loop(self) -> None:
        """Keep the DHT knitted: dial new peers (:meth:`knit`), ping peers that left lately and the bootstrap peers.

        A peer that vanished because *we* (or it) froze is alive again in a moment, but hivemind
        dropped it from the routing table; without a ping neither side would find the other.
        """
        while True:
            # Alone after having company: most likely the routing tables came apart (a live peer
            # that missed a few RPC deadlines on a loaded box), so knit every heartbeat, not every 5 s.
            alone = not self.records and bool(self.lost)
            await asyncio.sleep(self.heartbeat_s if alone else REPING_EVERY_S)
            now = self.clock.monotonic()
            for pid, at in list(self.lost.items()):
                if now - at > REPING_FOR_S:
                    del self.lost[pid]
            # Here, not in the heartbeat loop: a dial to an address that never answers takes the
            # DHT's whole operation timeout, longer than a record lives between heartbeats.
            await self.knit()
            recent = sorted(self.lost, key=self.lost.__getitem__, reverse=True)[:16]
            answered = await self.membership.reping(recent, self.bootstrap)
            if alone != self._was_alone:  # once per change: an operator sees when and why a peer sat alone
                self._was_alone = alone
                if alone:
                    log.warning("view_alone", lost_lately=len(self.lost), pinged=len(recent), answered=answered)
                else:
                    log.info("view_company_again", live_peers=len(self.records) + 1)
