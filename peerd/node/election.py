"""Plan election: who publishes round ``r``'s plan, and which plan this peer follows.

A round's plan comes from one of ``round.plan_candidates`` candidates, in rendezvous order over
the members of the last commit (every committer holds that list exactly, whatever its view read
returned). The leader publishes once it has read the view; candidate ``k`` only after ``k``
silent slots counted from its own read's end (``RoundClock.turn``), longer while a better-ranked
peer is alive at its state (``RoundClock.defer_s``). A publisher offers its plan over gRPC to
every member and every other live peer it knows, and stores it in the DHT; readers take the
best-ranked plan once no better one can still reach them. Two plans in one round split it, and
a split aborts for every member: every rule here exists to make that rare.

The round driver (peerd/node/driver.py) owns the round loop and passes each call a
:class:`Basis`: its last commit, when its view read ended, and the round's timing dict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from peerd.core import codec
from peerd.core import schedule as sch
from peerd.core.clock import PHASE_SLACK_S, RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.faults import FaultInjector
from peerd.core.fragments import shard_bounds
from peerd.core.log import get_logger
from peerd.mixing.base import Mixer
from peerd.net.ports import MembershipPort
from peerd.net.view import SwarmView
from peerd.node.finish import RunEnd
from peerd.node.offers import PlanInbox, PlanOfferer
from peerd.node.pacewatch import PaceWatch

log = get_logger("peerd.rounds")
# Rounds after a commit during which its co-members are taken to have committed too, whatever
# their records say (their new records may not have landed yet; later they would have).
COMMIT_ASSUMED_ROUNDS = 2
# A heartbeat stored this far (a share of round_s) plus one heartbeat period before a round's
# start still shows its author alive in it.
FRESH_SLACK = 0.1
Timed = Callable[[Coroutine[Any, Any, Any]], "asyncio.Future[Any]"]


@dataclass(frozen=True)
class Basis:
    """What the round driver knows of this round when it asks for a plan."""

    last_commit: sch.RoundPlan | None  # the plan of this peer's latest commit
    read_end: float  # when this round's view read ended (Unix time): candidate turns count from it
    timing: dict[str, Any]  # the round's phase times, logged with its outcome (written to)
    # This peer's state was downloaded from another peer after its last commit, a round or two
    # ago (a joiner, a laggard): it publishes no plan and announces it (see PlanElection._order).
    newcomer: bool = False


class PlanElection:
    """Obtains each round's plan: offered by its publisher, read from the DHT, or published by this peer."""

    def __init__(self, cfg: PeerdConfig, rounds: RoundClock, view: SwarmView, mixer: Mixer,
                 membership: MembershipPort, inbox: PlanInbox, offerer: PlanOfferer, end: RunEnd,
                 pacing: PaceWatch, faults: FaultInjector, timed: Timed) -> None:
        """``timed(op)`` runs a DHT operation and feeds its duration to the round clock's estimate."""
        self.cfg, self.rc, self.view, self.mixer, self.membership = cfg, rounds, view, mixer, membership
        self.inbox, self.offerer, self.end, self.pacing, self.faults, self.timed = (inbox, offerer, end, pacing,
                                                                                    faults, timed)
        self.peer_id = view.peer_id
        self._caps_said: set[int] = set()  # upload caps already reported as too slow for the round
        self._background: set[asyncio.Future[Any]] = set()  # plan stores still in flight, referenced

    def _keep(self, fut: asyncio.Future[Any]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def obtain(self, r: int, candidates: list[sch.Candidate], basis: Basis) -> sch.RoundPlan | None:
        """This round's plan: offered by its publisher, read from the DHT, or published by this peer.

        A publisher offers its plan to every member over gRPC (one hop) and stores it in the DHT
        for members whose offer was lost. DHT reads take several round trips over the internet
        and hundreds of ms on a busy box, so readers take an offered plan as soon as it is final
        (the leader's at once; candidate ``k``'s at candidate ``k + 1``'s turn, as a better one may
        still be on its way), keep reading the DHT in the background, and look until the round
        clock's ``plan_give_up``. A candidate publishes only when it has seen no plan at all by
        its turn, and only once (a store that timed out may still land; a second plan would split).
        """
        cfg, rc = self.cfg, self.rc
        elig = sch.eligible(candidates, self.mixer.mode)
        order = self._order(r, elig, basis.last_commit, basis.newcomer)
        rank = order.index(self.peer_id) if self.peer_id in order else len(order) + rc.plan_candidates
        # A better-ranked peer that is alive and in sync will publish: this one gives way longer.
        ahead_alive = 0 < rank < rc.plan_candidates and self._alive_ahead(r, order[:rank], candidates,
                                                                          basis.last_commit)
        defer = rc.defer_s() if ahead_alive else 0.0

        def turn(k: int) -> float:
            return rc.turn(r, k, basis.read_end) + (defer if k > 0 else 0.0)
        nbytes = self._round_bytes(r, len(elig))
        mine_up = self.view.uplink_bps
        if mine_up:  # this peer's own cap: it stops looking in time for its capped push, and says so once
            cap_bytes = self._cap_bytes(r, sum(1 for c in elig if c.reachable))
            give_up = rc.plan_give_up(r, cap_bytes, mine_up)
            self._check_cap(cap_bytes, mine_up, mine_up if self.view.reachable and self.mixer.mode != "gossip" else 0)
        else:
            give_up = rc.plan_give_up(r, nbytes)
        found: list[sch.RoundPlan] = []
        reads = 0

        # A peer that takes offers reads the DHT as the fallback for a lost one, a plan slot apart:
        # a lookup visits about every node of a small swarm (16 nodes: 12.6 kB of neighbour lists
        # per read), and read back to back it was most of a peer's DHT bytes. A plan read a slot
        # late is taken a slot late, as an offered one of the same rank would be; no read comes
        # before the leader can have published (its view read ends about when this one's did).
        # A client cannot be offered a plan (nobody can dial it): the DHT is its only way, and a
        # capped client that learns the plan late misses its upload (sim test_nat).
        poll_s = max(0.05, rc.plan_slot()) if self.view.reachable else 0.05

        async def read_dht() -> None:
            nonlocal reads
            while True:
                await asyncio.sleep(poll_s)
                found[:] = await self.timed(self.membership.read_plans(r, cfg.mixing.num_fragments))
                reads += 1

        reader = asyncio.ensure_future(read_dht())
        tried, mine, published_at = False, None, None
        try:
            while rc.now() < give_up:
                chosen = sch.choose_plan(found + self.inbox.offered(r) + ([mine] if mine is not None else []))
                if chosen is not None and rc.now() >= rc.settled_after(r, chosen.publisher_rank, basis.read_end):
                    basis.timing.update(source="mine" if chosen is mine else "dht" if chosen in found else "offer",
                                       reads=reads, rank=rank, published_at=published_at, deferred=defer > 0)
                    return chosen
                # A candidate publishes only within its own slot (the last one: any time). One
                # that comes later (a loop starved by a busy box) may meet a worse plan that its
                # members already took: its own, better-ranked one would split the round.
                in_slot = rank == rc.plan_candidates - 1 or rc.now() < turn(rank + 1)
                may_publish = self.end.finishing is None and rank < rc.plan_candidates and chosen is None and in_slot
                if not tried and may_publish and rc.now() >= turn(rank):
                    tried = True
                    published_at = round(rc.now() - rc.start(r), 3)
                    mine = self._publish(r, rank, candidates, nbytes, basis)  # rank < plan_candidates here
                    continue
                await self.inbox.wait(r, min(0.05, give_up - rc.now()))
        finally:
            reader.cancel()
        best = sch.choose_plan(found + self.inbox.offered(r) + ([mine] if mine is not None else []))
        if best is None and self.end.finishing is None:
            best = await self._late_offer(r, basis)
        if best is None:
            log.info("no_plan", round=r, rank=rank, reads=reads, late_s=round(rc.now() - give_up, 3))
        return best

    async def _late_offer(self, r: int, basis: Basis) -> sch.RoundPlan | None:
        """A plan naming this peer offered after it stopped looking, until the round's deadline.

        Its publisher counts on this peer's shard: without it the round aborts for every member.
        On a loaded box the offer may come after the reader's ``plan_give_up``; the pushes for it
        wait at this peer for its plan (peerd/mixing/inbox.py), so taking part late still
        commits the round, with what reached this peer as an owner by then.
        """
        rc = self.rc
        until = rc.deadline(r) - PHASE_SLACK_S
        while rc.now() < until:
            await self.inbox.wait(r, min(0.05, until - rc.now()))
            late = [p for p in self.inbox.offered(r) if p.index_of(self.peer_id) >= 0]
            if late:
                basis.timing["late_offer"] = round(rc.now() - rc.start(r), 3)
                return sch.choose_plan(late)
        return None

    def _alive_ahead(self, r: int, ahead: list[str], candidates: list[sch.Candidate],
                     last: sch.RoundPlan | None) -> bool:
        """Whether a peer ranked before this one is alive and at this peer's state, so that it will publish.

        Such a peer publishes a plan when its own view read ends. Evidence, either: it committed
        this peer's last commit, in the round just before (its reduced shard reached this peer a
        few seconds ago), or its record shows this peer's state and its copy was stored this
        round (the copy's expiry less ``dht.ttl_s``; a read may return the heartbeat before the
        round's, up to ``dht.heartbeat_s`` older, and clocks differ a little). A stale read
        showed co-members one commit behind and missed records whole, so the first is what
        holds in a steady swarm. A peer that crashed since still counts: that round gets its plan
        late or not at all (lost, not split). One departing, done or a newcomer publishes nothing.
        """
        state = self.view.state
        mine = state.revision, state.state_hash()
        since = self.rc.start(r) - self.cfg.dht.heartbeat_s - FRESH_SLACK * self.rc.round_s
        co = set(last.members) if last is not None and last.round == r - 1 else set()
        by_id = {c.peer_id: c for c in candidates}
        for pid in ahead:
            c, rec = by_id.get(pid), self.view.records.get(pid)
            if c is not None and (not c.ready or c.done or c.newcomer):
                continue
            if pid in co:
                return True
            if (c is not None and rec is not None and (c.revision, c.state_hash) == mine
                    and rec.expires - self.cfg.dht.ttl_s >= since):
                return True
        return False

    def _order(self, r: int, elig: list[sch.Candidate], last: sch.RoundPlan | None, newcomer: bool) -> list[str]:
        """Round ``r``'s plan slots: this peer's place in it is its rank (absent: it publishes nothing).

        In rendezvous order over the members of this peer's last commit: every peer that
        committed that plan holds the same member list, whatever its view read returned, so they
        agree on who leads. Over the eligible peers in this peer's view, the order before,
        different views (16 daemons on 2 cores read 7 to 12 of the same 16 peers) made several
        peers each the leader of its own plan, and the round split. A member that has left or
        fell behind keeps its place and publishes nothing: the next one publishes after its slot,
        as when a leader dies. A peer that was not a member of that commit (it joined, or applied
        it as an observer) publishes no plan while the commit is recent; without a recent commit,
        the eligible peers' order.

        A ``newcomer`` (its state downloaded since its last commit) is left out: it would rank by
        its view, not by the commit its co-members share, and where it came first the round had
        two leaders (sim test_slow_reads, seed 2: a laggard that fetched the state while the
        round it fetched for aborted). Those it downloaded from lead. Only for
        ``COMMIT_ASSUMED_ROUNDS`` rounds after the download, so peers that all restarted or all
        downloaded lose at most that many rounds. A newcomer says so in its record, and those
        ordering by their views leave it out too.
        """
        if last is not None and last.round >= r - COMMIT_ASSUMED_ROUNDS and self.mixer.shared_state:
            basis = [pid for pid in last.members if not (newcomer and pid == self.peer_id)]
        else:
            # Newcomers announce it (their records' ``new``), this one included: every peer that
            # orders by its view leaves them out, as they leave themselves out. Before, a
            # newcomer left only itself out; where it and a peer that had just died took both
            # candidate slots of a veteran, nobody published for rounds on end (the chaos test
            # stalled 16 s; sim test_newcomer_order). When all are newcomers, all rank.
            basis = [c.peer_id for c in elig if not c.newcomer] or [c.peer_id for c in elig]
        return sch.rendezvous_order(self.cfg.run_id, r, basis)

    async def offered(self, r: int, basis: Basis) -> sch.RoundPlan | None:
        """The plan offered for round ``r`` that its members follow (a behind peer publishes and polls nothing).

        Settled like a reader's (:meth:`obtain`); past the give-up, a late offer that names
        this peer (its shard is counted on).
        """
        rc, give_up = self.rc, self.rc.plan_give_up(r)
        while True:
            chosen = sch.choose_plan(self.inbox.offered(r))
            if chosen is not None and rc.now() >= rc.settled_after(r, chosen.publisher_rank, basis.read_end):
                return chosen
            if rc.now() >= give_up:
                return chosen or await self._late_offer(r, basis)
            await self.inbox.wait(r, min(0.05, give_up - rc.now()))

    def _publish(self, r: int, rank: int, candidates: list[sch.Candidate], nbytes: int,
                 basis: Basis) -> sch.RoundPlan | None:
        """Build this peer's plan for round ``r``, offer it to the members and store it (both in the background)."""
        cfg, rc = self.cfg, self.rc
        now = rc.now()
        members = self.view.unsuspected(candidates, keep=self.end.must_name())
        elig = sch.eligible(members, self.mixer.mode)
        basis.timing.update(view=len(candidates), unsuspected=len(members), eligible=len(elig))
        fragment = None
        if cfg.pace_h:
            fragment = self.pacing.choose(r, elig, sch.is_final(members, self.mixer.mode))
        uplink = self.view.slowest_uplink(c.peer_id for c in elig)
        # Owners push reduced shards (DiLoCo); gossip has no reduce phase to pace.
        owners = self.view.slowest_uplink(c.peer_id for c in elig if c.reachable) if self.mixer.mode != "gossip" else 0
        if uplink:
            nbytes = self._cap_bytes(r, sum(1 for c in elig if c.reachable))
        self._check_cap(nbytes, uplink, owners)
        plan = sch.make_plan(cfg.run_id, r, cfg.mixing.num_fragments, self.peer_id,
                             members, rc.round_s, rc.deadline_fraction, now,
                             self.mixer.mode, cfg.mixing.topology,
                             collect_deadline=rc.collect_deadline(r, now, nbytes, uplink, owners),
                             deadline=rc.deadline(r), paced=cfg.pace_h, fragment=fragment, publisher_rank=rank)
        if plan is None or len(plan.members) < cfg.round.min_members:
            # Everyone else is suspected: publish nothing, but a better-ranked or later
            # candidate may still publish a plan that names this peer.
            return None
        if rank == 0:
            self.faults.hit("leader_before_publish")
        ttl_s = 4 * rc.round_s
        # Peers left out get it too: with it they stay in sync without a download (_observe). Not
        # client-mode peers: they cannot be dialled (they still find the plan in the DHT).
        observers = [c.endpoint for c in candidates
                     if c.reachable and c.peer_id != self.peer_id and plan.index_of(c.peer_id) < 0]
        # And the owners of this peer's last commit that its view read missed: a candidate left
        # without the leader's plan publishes its own (a split round); with it, it observes.
        last, seen = basis.last_commit, {c.peer_id for c in candidates}
        if last is not None and last.round >= r - COMMIT_ASSUMED_ROUNDS:
            observers += [e for i, (pid, e) in enumerate(zip(last.members, last.endpoints, strict=True))
                          if i < last.owners and pid not in seen and plan.index_of(pid) < 0]
        self.offerer.offer(plan, self.membership.plan_offer(plan, ttl_s), observers)
        self._keep(self.timed(self.membership.publish_plan(plan, ttl_s=ttl_s)))
        return plan

    def _round_bytes(self, r: int, members: int) -> int:
        """What one member pushes per exchange phase of round ``r``: its fragment, encoded, less its own shard."""
        mix, numels = self.cfg.mixing, self.view.state.layout.numels
        # Paced: the fragment is the publisher's choice, not yet known; size for the largest.
        numel = max(numels) if self.cfg.pace_h else numels[sch.fragment_for_round(r, mix.num_fragments)]
        size = codec.encoded_size(mix.codec, numel, mix.block_size, mix.sparse_density)
        return size * max(1, members - 1) // max(1, members)

    def _cap_bytes(self, r: int, owners: int) -> int:
        """What a capped member may push in one phase of round ``r``: every owner's shard, encoded.

        An upper bound (a client pushes all of them; an owner one less), per shard so that the
        codec's per-shard overhead counts: a capped push that overruns its phase is dropped.
        """
        mix, numels = self.cfg.mixing, self.view.state.layout.numels
        # Paced: the fragment is the publisher's choice, not yet known; size for the largest.
        numel = max(numels) if self.cfg.pace_h else numels[sch.fragment_for_round(r, mix.num_fragments)]
        return sum(codec.encoded_size(mix.codec, end - start, mix.block_size, mix.sparse_density)
                   for start, end in shard_bounds(numel, max(1, owners), mix.block_size))

    def _check_cap(self, nbytes: int, uplink: int, owners: int) -> None:
        """Say once (per cap) when the slowest members' upload caps cannot fit a round, with the fix."""
        if (uplink <= 0 and owners <= 0) or self.rc.cap_fits(nbytes, uplink, owners) or uplink in self._caps_said:
            return
        self._caps_said.add(uplink)
        slow = sorted(pid[-8:] for pid, rec in self.view.records.items() if rec.uplink_bps == uplink)
        log.warning("upload_cap_too_slow", uplink_bytes_per_s=uplink, peers=slow or ["this peer"],
                    push_bytes=nbytes, round_s=self.rc.round_s,
                    fix=f"set round.round_s to at least {self.rc.round_s_for_cap(nbytes, uplink, owners)}, or raise "
                        "transport.max_upload_mbit on the capped peer (rounds split the window until then; "
                        "its contributions or reduced shards may miss it)")
