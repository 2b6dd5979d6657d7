"""Round driver: one round per ``round.round_s`` of wall time, dispatch to the mixer.

For each round: publish this peer's record, read the view at the settle point, decide whether this
peer is in sync, obtain the round's plan (:class:`~peerd.node.election.PlanElection`: offered by
its publisher, read from the DHT, or published by this peer when its turn comes), run it through
the mixer, count the outcome. In a work-paced run (``round.target_h``) a publisher's plan syncs
the fragment that is due or holds (peerd/core/pace.py); a held round exchanges nothing and is
counted as ``held``, not as a miss. After a partial commit the view is read as the committers see
it (:meth:`RoundDriver._candidates`), and a peer one commit behind catches up by replaying the
missed round before it looks for a plan (:meth:`RoundDriver._replay_missed`); named while still
behind, it does its part without its state, so the round commits for the others. A peer the plan
leaves out applies what its members commit (:meth:`RoundDriver._observe`), fetching the plan's
starting state first if it is behind it, so it is in sync for the next round without a download
after this one. Time comes from the injected :class:`~peerd.core.clock.RoundClock`, so the
simulation tier runs this very code on virtual time; the DHT operations timed here feed its
estimates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from peerd.core import schedule as sch
from peerd.core.clock import RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.errors import Counters, FatalError
from peerd.core.faults import FaultInjector
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.mixing.base import Mixer, RoundOutcome
from peerd.net.ports import MembershipPort
from peerd.net.view import SwarmView
from peerd.node.election import COMMIT_ASSUMED_ROUNDS, Basis, PlanElection
from peerd.node.finish import RunEnd
from peerd.node.health import RoundLog
from peerd.node.offers import PlanInbox, PlanOfferer
from peerd.node.pacewatch import PaceWatch

log = get_logger("peerd.rounds")
T = TypeVar("T")


class RoundDriver:
    """Runs the round loop of one peer."""

    def __init__(self, cfg: PeerdConfig, rounds: RoundClock, view: SwarmView, mixer: Mixer,
                 membership: MembershipPort, metrics: Metrics, counters: Counters, faults: FaultInjector,
                 exit_when_done: bool, request_stop: Callable[[str], None], inbox: PlanInbox,
                 offerer: PlanOfferer) -> None:
        """``request_stop("done")`` ends the peer once a finite run's final rounds are committed."""
        self.cfg, self.rc, self.view, self.mixer, self.membership = cfg, rounds, view, mixer, membership
        self.inbox, self.offerer = inbox, offerer
        self._background: set[asyncio.Future[Any]] = set()  # plan stores still in flight, referenced
        self.metrics, self.counters, self.faults = metrics, counters, faults
        self.exit_when_done, self.request_stop = exit_when_done, request_stop
        self.peer_id = view.peer_id
        self.end = RunEnd(exit_when_done, mixer.shared_state, view.state.layout.num_fragments, counters)  # finite runs
        self.last_round: dict[str, Any] = {}
        self.round_log = RoundLog()  # recent outcomes, for health
        self.pacing = PaceWatch(cfg.pace_h, cfg.mixing.num_fragments, rounds, metrics)
        self.last_commit: sch.RoundPlan | None = None  # the plan of this peer's latest commit
        self.fetched_round: int | None = None  # the round in which this peer last took its state from others
        self.last_plan: sch.RoundPlan | None = None  # the latest plan it took part in (committed or not)
        self.timing: dict[str, Any] = {}  # the current round's phase times (s after its start), logged with its outcome
        self.read_end = 0.0  # when this round's view read ended (plan turns count from it: RoundClock.turn)
        view.newcomer = lambda: self._newcomer(self.rc.index())
        self.first: int | None = None  # the first round this peer takes part in (start_round)
        view.from_round = lambda: self.first if self.first is not None and self.rc.index() < self.first else 0
        self.election = PlanElection(cfg, rounds, view, mixer, membership, inbox, offerer, self.end, self.pacing,
                                     faults, self._timed)

    def start_round(self) -> int:
        """Fix the first round this peer takes part in, now that it is synced; its record says so until then.

        A peer ready a moment after a round's first half-settle sits that round out
        (``RoundClock.first_round``). At 200 ms RTT the others read their views until about 1 s into
        a round, saw it ready, named it in their plan, and the round aborted for want of its shards:
        every abort of ``bench.wan_rounds --profile intercontinental`` with clock rounds was in the
        first round with joiners. The record's ``from_round`` keeps it out of earlier rounds' plans
        (:meth:`round`) while it stays ready for everything else (a donor to joiners, a member in
        end-of-run checks).
        """
        if self.first is None:
            self.first = self.rc.first_round(self.rc.now())
        return self.first

    async def loop(self) -> None:
        """Run rounds until cancelled; a broken round is counted, never fatal."""
        r = self.start_round()
        if self.view.state.revision > 0:  # a joiner's download, or a checkpoint: not a commit with anyone here
            self.fetched_round = r
        while True:
            await asyncio.sleep(max(0.0, self.rc.start(r) - self.rc.now()))
            try:
                await self.round(r)
            except (FatalError, asyncio.CancelledError):
                raise
            except Exception:  # noqa: BLE001 - one broken round must not take the peer down
                log.exception("round_failed", round=r)
                self.counters.rounds_aborted += 1
                self._count("aborted", "internal_error")
            r = max(r + 1, self.rc.index())

    def failure(self) -> None:
        """Note the first failure since the last commit (recovery time starts)."""
        if self.counters.failure_at is None and self.counters.rounds_committed > 0:
            self.counters.failure_at = self.rc.clock.monotonic()

    def _count(self, outcome: str, reason: str) -> None:
        self.metrics.rounds.labels(outcome=outcome, reason=reason).inc()
        key = f"{outcome}:{reason}"
        self.counters.round_outcomes[key] = self.counters.round_outcomes.get(key, 0) + 1
        if outcome == "skipped" and reason == "no_reachable_peer":
            if self.last_round.get("reason") != reason:
                log.warning("no_reachable_peer", peers=len(self.view.records) + 1,
                            fix="rounds wait until a peer that accepts inbound connections joins (transport.mode)")
        elif outcome == "skipped" and reason != "too_few_peers":  # a lone peer would log every round
            log.info("round_skipped", reason=reason, peers=len(self.view.records) + 1)
        self.last_round = {"outcome": outcome, "reason": reason, "at": self.rc.now()}
        if self.timing.get("round") is not None:  # this round's phases, for the log (debug level)
            log.debug("round_timing", outcome=f"{outcome}:{reason}", ended=round(self.rc.now() -
                      self.rc.start(self.timing["round"]), 3), **self.timing)
            self.timing = {}
        self.round_log.observe(outcome, reason)

    async def round(self, r: int) -> None:
        """Take part in round ``r`` (or skip it, counted with the reason)."""
        rc, view = self.rc, self.view
        # Publish this peer's post-commit revision first, then read everyone's after a short
        # settle time, so the plan is built from this round's records rather than last round's.
        beat = self._timed(view.heartbeat())
        # Bounded: a slow DHT store must not eat the round (the heartbeat loop retries anyway).
        await asyncio.wait([beat], timeout=max(0.0, rc.settle_at(r) - rc.now()))
        await asyncio.sleep(max(0.0, rc.settle_at(r) - rc.now()))
        self.timing = {"round": r, "settled": round(rc.now() - rc.start(r), 3)}
        await self._timed(view.refresh())
        self.read_end = rc.now()
        self.timing["refreshed"] = round(self.read_end - rc.start(r), 3)
        # Membership is the plan's to decide: eligibility (and whether to read this round's
        # plan) uses every live record. Suspicions shape only the plans this peer publishes;
        # a reader that skipped rounds over its own suspicions went out of phase with a peer
        # suspecting it back, and two finished peers aborted every round for 20 minutes.
        candidates = self._candidates(r)
        if self.mixer.shared_state and await self._replay_missed(r, candidates):
            self._keep(self._timed(view.heartbeat()))  # announce the revision it caught up to
            candidates = self._candidates(r)
        me = view.my_record().candidate()
        ending = self.end.look(r, me, candidates)
        if ending == "done":
            self.request_stop("done")
            return
        if ending == "hold":  # peers it was settled with are missing: no round among the rest (peerd/node/finish.py)
            self._count("skipped", "finishing")
            return
        # Peers whose round loop starts later sit this round out: no plan names them (start_round).
        candidates = [c for c in candidates if c.from_round <= r]
        elig = sch.eligible(candidates, self.mixer.mode)
        if me not in elig:
            # Behind, or off the majority hash. A plan may still name this peer (its publisher
            # took it to have committed with it).
            await self._sit_out(r, await self.election.offered(r, self._basis(r)) if self.mixer.shared_state else None)
            return
        if len(elig) < self.cfg.round.min_members:
            self._count("skipped", "too_few_peers")
            if not sch.has_owner(elig):  # a lone client: a reachable joiner may be waiting for its state
                await self.mixer.hand_over(r)
            if self.exit_when_done and me.done and not self._someone_to_wait_for():
                self.request_stop("done")
            return
        if not sch.has_owner(elig):
            # Only client-mode peers (nobody can be dialled): no plan could give a shard to anyone.
            # Wait, state untouched, until a reachable peer joins; said once, not every round.
            self._count("skipped", "no_reachable_peer")
            # A reachable joiner cannot fetch from clients: one of them hands the state over.
            await self.mixer.hand_over(r)
            return
        if self.end.await_laggards(candidates, elig):
            self._count("skipped", "awaiting_sync")
            return
        if self.cfg.pace_h:
            self.pacing.observe(r, elig)
        plan = await self.election.obtain(r, candidates, self._basis(r))
        self.timing.update(planned=round(rc.now() - rc.start(r), 3), members=len(elig))
        if plan is not None:
            self.timing.update(publisher_rank=plan.publisher_rank, plan_members=len(plan.members),
                               collect=round(plan.collect_deadline - rc.start(r), 3))
        if plan is None:
            # Between the two looks of a finishing run nobody that looked settled publishes: that
            # round is the end-of-run check, not a lost round, and is counted apart.
            self._count("skipped", "finishing" if self.end.finishing is not None else "no_plan")
            return
        if plan.index_of(self.peer_id) < 0:
            observed = await self._observe(r, plan)  # in sync with the members afterwards, no download
            self._count("skipped", "not_in_plan")
            if observed:
                self._keep(self._timed(view.heartbeat()))
            return
        if plan.paced != self.cfg.pace_h:
            # Published by a peer paced otherwise (round.target_h differs): its fragment choice is not ours.
            self._count("skipped", "pace_mismatch")
            return
        if not plan.syncs:
            self.counters.rounds_held += 1
            self._count("held", "not_due")  # work pacing: no fragment is due, nothing to exchange
            return
        state = self.view.state
        if self.mixer.shared_state and (plan.revision != state.revision or plan.state_hash != state.state_hash()):
            if plan.revision > state.revision:  # named but behind
                await self._sit_out(r, plan)
                return
            self._count("skipped", "not_in_sync")
            return
        t0 = rc.clock.monotonic()
        self.last_plan = plan
        outcome = await self.mixer.run(plan)
        self.metrics.transfer_duration.observe(rc.clock.monotonic() - t0)
        self.metrics.revision.set(state.revision)
        self._account(r, plan, outcome)
        if outcome.committed:
            self.last_commit = plan
            # Announce the new revision now rather than at the next heartbeat: until then a joiner
            # or a plan publisher sees the members at different revisions (one donor, fewer members).
            self._keep(self._timed(view.heartbeat()))

    async def _sit_out(self, r: int, plan: sch.RoundPlan | None) -> None:
        """Round ``r`` for a peer behind the swarm: its part of ``plan`` if it is named, then catch up.

        Named while behind, it does its part without a contribution (``Mixer.run(in_sync=False)``),
        or the round would abort for every member; then it fetches what the others commit in this
        round once its deadline has passed. Not named, it fetches the state the plan starts from
        at once and applies what the members commit (:meth:`_observe`): a fetch after the
        deadline took 0.5-4.5 s on a loaded box, ended after the next round's view was read, and
        the peer was left out and behind again, round after round. Either way it is a member next
        round; where the early catch-up fails, the late fetch still runs.
        """
        state, named = self.view.state, plan is not None and plan.index_of(self.peer_id) >= 0
        if plan is not None and named and plan.revision > state.revision:
            await self.mixer.run(plan, in_sync=False)
        observed = False
        if plan is not None and not named and plan.syncs and plan.revision >= state.revision:
            if plan.revision > state.revision:
                self.timing["fetched"] = await self.mixer.catch_up(not_before=self.rc.now())
                if self.timing["fetched"]:
                    self.fetched_round = r
            observed = await self._observe(r, plan)
        self._count("skipped", "not_in_sync")
        if not observed and await self.mixer.catch_up(not_before=self.rc.catch_up_at(r)):
            self.fetched_round = r
        await self.view.heartbeat()

    async def _observe(self, r: int, plan: sch.RoundPlan) -> bool:
        """Apply round ``r``'s ``plan`` without being its member: its reduced shards, once reduced.

        For a peer at the plan's starting point (revision and hash) that the plan leaves out: the
        same bytes through the same outer step give the members' new state bit for bit
        (``Mixer.replay``), and the worker keeps its progress (rebased, its samples unsent). The
        pulls start at the collection deadline (owners answer once they have reduced) and end
        when the members' own late pulls do (``RoundClock.late_until``). A round its members
        abort is not applied (a shard is missing); if it commits here and not there, this peer's
        hash is off the majority and it resyncs, as any forked peer does. False when nothing
        was applied (another mode, a hold plan, another starting point, shards missing).
        """
        state = self.view.state
        if (not self.mixer.shared_state or plan.mode != self.mixer.mode or not plan.syncs
                or (plan.revision, plan.state_hash) != (state.revision, state.state_hash())):
            return False
        await asyncio.sleep(max(0.0, plan.collect_deadline - self.rc.now()))
        done = await self.mixer.replay(plan, self.rc.late_until(r, plan.deadline))
        self.timing["observed"] = round(self.rc.now() - self.rc.start(r), 3) if done else False
        if done:
            self.last_commit = plan  # the same commit its members made (their next views assume it)
            self.metrics.revision.set(state.revision)
            log.info("round_observed", round=r, revision=state.revision)
        return done

    def _candidates(self, r: int) -> list[sch.Candidate]:
        """Every live peer as a schedule candidate, with the view's lag after this peer's last commit taken out.

        A member of this peer's last committed plan whose record still shows where that plan
        started is taken to have moved with it (``schedule.assume_committed``): its new record may
        not have landed yet, and each committer saw a different few of them move (small, split
        plans). One that did not move is named while behind: it replays the round it missed or
        does its part without a contribution (see :meth:`round`). In the round right after the
        commit, co-members missing from the view are added where this peer is
        (``schedule.recall_missing``). Not in a finite run's last rounds, whose end checks must
        see where every peer really is.
        """
        candidates = self.view.candidates()
        last = self.last_commit
        if last is None or last.round < r - COMMIT_ASSUMED_ROUNDS or any(c.done for c in candidates):
            return candidates
        state = self.view.state
        candidates = sch.assume_committed(candidates, last, state.revision, state.state_hash())
        if last.round == r - 1:  # co-members the view read missed: alive moments ago
            candidates = sch.recall_missing(candidates, last, state.revision, state.state_hash(),
                                             self.view.departed)
        return candidates

    async def _replay_missed(self, r: int, candidates: list[sch.Candidate]) -> bool:
        """Behind the view by one commit: apply the missed round's reduced shards (``Mixer.replay``).

        The missed plan is one offered to this peer or that it ran in round ``r - 1``, else read
        from the DHT, and must start from this peer's state. Bounded by the time a member stops
        looking for this round's plan: past that, a resync after the round is as good.
        """
        state = self.view.state
        elig = sch.eligible(candidates, self.mixer.mode)
        if not elig or elig[0].revision != state.revision + 1:
            return False
        known = self.inbox.offered(r - 1) + ([self.last_plan] if self.last_plan is not None else [])
        mine = state.revision, state.state_hash()

        def starts_here(plans: list[sch.RoundPlan]) -> list[sch.RoundPlan]:
            return [p for p in plans if p.round == r - 1 and (p.revision, p.state_hash) == mine]

        plans = starts_here(known)
        if not plans:
            plans = starts_here(await self._timed(self.membership.read_plans(r - 1, self.cfg.mixing.num_fragments)))
        plan = sch.choose_plan(plans)
        if plan is None:
            return False
        done = await self.mixer.replay(plan, self.rc.plan_give_up(r))
        self.timing["replayed"] = done
        if done:
            self.last_commit = plan
            self.metrics.revision.set(self.view.state.revision)
            log.info("round_replayed", round=plan.round, revision=self.view.state.revision)
        return done

    def _someone_to_wait_for(self) -> bool:
        """Whether a done peer short of members stays: a ready peer is announced, or a joiner it can give its state.

        A joiner can fetch from a reachable peer, and a client hands its state to a reachable joiner
        (peerd/mixing/handover.py). A client joiner announced while only this client is up can get
        the state from nobody: waiting for it kept a done client up until the run's deadline (sim
        seed 1516). It starts a lineage of its own once this peer has left, as any client that
        starts alone does.
        """
        return any(rec.ready or self.view.reachable or rec.reachable for rec in self.view.records.values())

    def _account(self, r: int, plan: sch.RoundPlan, outcome: RoundOutcome) -> None:
        if plan.final and not self.mixer.shared_state and not outcome.committed:
            # gossip: a last round without a confirmed partner still ends this fragment's run
            self.counters.final_fragments.add(plan.fragment)
        if outcome.committed:
            if self.counters.failure_at is not None:
                took = self.rc.clock.monotonic() - self.counters.failure_at
                self.counters.recoveries_s.append(round(took, 3))
                self.metrics.recovery.observe(took)
                self.counters.failure_at = None
            self.counters.rounds_committed += 1
            self._count("committed", "ok")
            if plan.final:
                self.counters.final_fragments.add(plan.fragment)
        else:
            self.failure()
            self.counters.rounds_aborted += 1
            self._count("aborted", outcome.reason)
            log.info("round_aborted", round=r, reason=outcome.reason, members=len(plan.members),
                     missing=[m[-8:] for m in outcome.missing])
            # A member that a rival plan of this round names most likely followed that one (a
            # split round), alive: suspecting it would leave it out of the next plans too.
            rivals = {m for p in self.inbox.offered(r) if p.plan_id != plan.plan_id for m in p.members}
            self.view.suspect(tuple(m for m in outcome.missing if m not in rivals))

    def _timed(self, op: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run a DHT operation; its duration feeds the round clock's DHT estimate."""
        t0 = self.rc.clock.monotonic()
        fut = asyncio.ensure_future(op)
        fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is not None
                              else self.rc.net.dht(self.rc.clock.monotonic() - t0))
        return fut

    def _newcomer(self, r: int) -> bool:
        """Whether this peer's state was downloaded since its last commit, in round ``r`` or the two before."""
        got = self.fetched_round
        return (got is not None and r - got <= COMMIT_ASSUMED_ROUNDS
                and (self.last_commit is None or self.last_commit.round < got))

    def _basis(self, r: int) -> Basis:
        return Basis(self.last_commit, self.read_end, self.timing, self._newcomer(r))

    def _keep(self, fut: asyncio.Future[Any]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
