"""Round loop of a daemon: wall-clock rounds, plan election/publication, running a round.

A mixin of :class:`peerd.daemon.Daemon` (it uses the daemon's membership, state, Diloco mixer,
metrics and counters); kept apart so the daemon module stays a composition.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from peerd import schedule as sch
from peerd.errors import FatalError
from peerd.faults import FAULTS
from peerd.log import get_logger

if TYPE_CHECKING:
    from peerd.membership import PeerRecord

log = get_logger("peerd.rounds")

# Readers look for the round's plan until this fraction of the exchange window (round start to
# deadline) has passed; later than that a member could not contribute before collection closes.
PLAN_READ_FRACTION = 0.4
# A laggard fetches state this fraction of a round after the round's deadline (commits are done).
CATCH_UP_AFTER = 0.02
# At the end of a finite run, rounds the in-sync peers hold so a peer behind them can resync.
LAGGARD_WAIT_ROUNDS = 3


class RoundsMixin:
    """Runs one round per ``round.round_s`` of wall time."""

    async def _round_loop(self) -> None:
        round_s = self.cfg.round.round_s
        now = time.time()
        last = sch.round_index(now, round_s)
        if now < sch.round_start(last, round_s) + self.cfg.round.settle_s * 0.5:
            # Our ready record may be in the views others read at this round's settle point,
            # so they may name us in its plan: take part rather than make it abort.
            last -= 1
        while True:
            r = max(last + 1, sch.round_index(time.time(), round_s))
            await asyncio.sleep(max(0.0, sch.round_start(r, round_s) - time.time()))
            last = r
            try:
                await self._round(r)
            except (FatalError, asyncio.CancelledError):
                raise
            except Exception:  # noqa: BLE001 - one broken round must not take the peer down
                log.exception("round_failed", round=r)
                self.counters.rounds_aborted += 1
                self._count("aborted", "internal_error")

    def _failure(self) -> None:
        if self.counters.failure_at is None and self.counters.rounds_committed > 0:
            self.counters.failure_at = time.monotonic()

    def _count(self, outcome: str, reason: str) -> None:
        self.metrics.rounds.labels(outcome=outcome, reason=reason).inc()
        if outcome == "skipped" and reason != "too_few_peers":  # a lone peer would log every round
            log.info("round_skipped", reason=reason, peers=len(self.view) + 1)
        self.last_round = {"outcome": outcome, "reason": reason, "at": time.time()}
        self.round_log.observe(outcome, reason)

    async def _round(self, r: int) -> None:
        cfg, state = self.cfg, self.state
        assert state is not None and self.membership is not None and self.diloco is not None
        # Publish this peer's post-commit revision first, then read everyone's after a short
        # settle time, so the plan is built from this round's records rather than last round's.
        beat = asyncio.ensure_future(self._heartbeat_once())
        settle_at = sch.round_start(r, cfg.round.round_s) + cfg.round.settle_s
        # Bounded: a slow DHT store must not eat the round (the heartbeat loop retries anyway).
        await asyncio.wait([beat], timeout=max(0.0, settle_at - time.time()))
        await asyncio.sleep(max(0.0, settle_at - time.time()))
        await self._refresh_view()
        me = self._my_record().candidate()
        candidates = [rec.candidate() for pid, rec in self.view.items() if not self._suspected(pid, rec)] + [me]
        elig = sch.eligible(candidates, cfg.mixing.mode)
        if me not in elig:
            # Behind, or off the majority hash: no plan of this round names us. Fetch what the
            # others commit in it once its deadline has passed, and be a member next round.
            self._count("skipped", "not_in_sync")
            fetch_at = sch.round_start(r, cfg.round.round_s) + (cfg.round.deadline_fraction + CATCH_UP_AFTER) \
                * cfg.round.round_s
            await self._sync_if_needed(install_into_model=False, not_before=fetch_at)
            await self._heartbeat_once()
            return
        if len(elig) < cfg.round.min_members:
            self._count("skipped", "too_few_peers")
            if self.exit_when_done and me.done and not self.view:
                self.request_stop("done")
            return
        if self._await_laggards(candidates, elig):
            self._count("skipped", "awaiting_sync")
            return
        plan = await self._obtain_plan(r, candidates)
        if plan is None:
            self._count("skipped", "no_plan")
            return
        if plan.index_of(self.peer_id) < 0:
            self._count("skipped", "not_in_plan")
            return
        if plan.mode != "gossip" and (plan.revision != state.revision or plan.state_hash != state.state_hash()):
            self._count("skipped", "not_in_sync")
            return
        t0 = time.monotonic()
        outcome = await (self.gossip or self.diloco).run(plan)  # mixing mode dispatch
        self.metrics.transfer_duration.observe(time.monotonic() - t0)
        self.metrics.revision.set(state.revision)
        if plan.final and self.gossip is not None and not outcome.committed:
            # gossip: a last round without a confirmed partner still ends this fragment's run
            self.counters.final_fragments.add(plan.fragment)
            if self.exit_when_done and len(self.counters.final_fragments) == state.layout.num_fragments:
                self.request_stop("done")
        if outcome.committed:
            if self.counters.failure_at is not None:
                took = time.monotonic() - self.counters.failure_at
                self.counters.recoveries_s.append(round(took, 3))
                self.metrics.recovery.observe(took)
                self.counters.failure_at = None
            self.counters.rounds_committed += 1
            self._count("committed", "ok")
            if plan.final:
                self.counters.final_fragments.add(plan.fragment)
                if self.exit_when_done and len(self.counters.final_fragments) == state.layout.num_fragments:
                    self.request_stop("done")
        else:
            self._failure()
            self.counters.rounds_aborted += 1
            self._count("aborted", outcome.reason)
            log.info("round_aborted", round=r, reason=outcome.reason, members=len(plan.members),
                     missing=[m[-8:] for m in outcome.missing])
            self._suspect(outcome.missing)

    def _await_laggards(self, candidates: list[sch.Candidate], elig: list[sch.Candidate]) -> bool:
        """Whether to hold this round so that finished peers behind the swarm can catch up.

        When every live peer has finished training, the last rounds decide the run's final
        state. A laggard catches up just after a round's deadline; if its fetch or its next
        heartbeat is late (a busy box), the others' next commit leaves it behind again, and
        once they have left it would end the run on a state of its own. So while everyone is
        done and someone ready is not in sync, the in-sync peers hold for at most
        ``LAGGARD_WAIT_ROUNDS`` rounds; the laggard's record then matches and the final rounds
        include it.
        """
        ready = [c for c in candidates if c.ready]
        waiting = (self.cfg.mixing.mode != "gossip" and len(elig) < len(ready)
                   and all(c.done for c in ready))
        self.laggard_waits = self.laggard_waits + 1 if waiting else 0
        return waiting and self.laggard_waits <= LAGGARD_WAIT_ROUNDS

    def _suspect(self, peer_ids: tuple[str, ...]) -> None:
        """Leave members that failed a round out of the next plans.

        A SIGKILLed peer's record stays in the DHT until its TTL runs out; without this every
        round until then would name it again and abort again (two or three lost rounds per
        crash). A suspect is readmitted as soon as its record moves (a slow but live peer keeps
        training, so its step advances) or after ``dht.ttl_s`` plus one round, when a dead
        peer's record has expired anyway.
        """
        until = time.monotonic() + self.cfg.dht.ttl_s + self.cfg.round.round_s
        for pid in peer_ids:
            rec = self.view.get(pid)
            if pid != self.peer_id and rec is not None:
                self.suspects[pid] = (until, rec.incarnation, rec.step)

    def _suspected(self, peer_id: str, rec: PeerRecord) -> bool:
        entry = self.suspects.get(peer_id)
        if entry is None:
            return False
        until, incarnation, step = entry
        if time.monotonic() >= until or (rec.incarnation, rec.step) != (incarnation, step):
            del self.suspects[peer_id]
            return False
        return True

    async def _obtain_plan(self, r: int, candidates: list[sch.Candidate]) -> sch.RoundPlan | None:
        """This round's plan: read from the DHT, or published by this peer when its slot comes.

        A DHT read or store can take a few hundred ms on a busy box (the remote loop threads
        share the GIL with training), so readers keep looking until ``PLAN_READ_FRACTION`` of
        the exchange window has passed rather than only during the publication slots, and a
        publisher uses its own plan at once unless it already saw a better-ranked one: reading
        it back cost the whole window on a loaded 2-core machine (CI) and the round was lost.
        """
        cfg = self.cfg
        assert self.membership is not None
        elig = sch.eligible(candidates, cfg.mixing.mode)
        order = sch.rendezvous_order(cfg.run_id, r, [c.peer_id for c in elig])
        rank = order.index(self.peer_id)
        r0 = sch.round_start(r, cfg.round.round_s)
        start = r0 + cfg.round.settle_s
        give_up = max(start + cfg.round.plan_slot_s * (cfg.round.plan_candidates + 1),
                      r0 + PLAN_READ_FRACTION * cfg.round.deadline_fraction * cfg.round.round_s)
        reads, tried, mine = 0, False, None
        while time.time() < give_up:
            reads += 1
            plans = await self.membership.read_plans(r, cfg.mixing.num_fragments)
            chosen = sch.choose_plan(plans + ([mine] if mine is not None else []))
            if chosen is not None:  # with ``mine``: this was the read-back, take the best we know
                return chosen
            if (not tried and rank < cfg.round.plan_candidates
                    and time.time() >= sch.publish_time(r, rank, cfg.round.round_s, cfg.round.plan_slot_s,
                                                       cfg.round.settle_s)):
                tried = True  # once: a store that timed out may still land, and a second plan would split
                plan = sch.make_plan(cfg.run_id, r, cfg.mixing.num_fragments, self.peer_id, candidates,
                                     cfg.round.round_s, cfg.round.deadline_fraction, time.time(),
                                     cfg.mixing.mode, cfg.mixing.topology)
                if plan is None or len(plan.members) < cfg.round.min_members:
                    return None
                if rank == 0:
                    FAULTS.hit("leader_before_publish")
                if await self.membership.publish_plan(plan, ttl_s=4 * cfg.round.round_s):
                    if rank == 0:
                        return plan  # nobody outranks the leader: no need to read it back
                    mine = plan  # read back once: a better-ranked plan may have landed meanwhile
                    continue
            await asyncio.sleep(0.05)
        if mine is not None:
            return mine
        log.info("no_plan", round=r, rank=rank, reads=reads, late_s=round(time.time() - give_up, 3))
        return None
