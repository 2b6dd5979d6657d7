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
        self.last_round = {"outcome": outcome, "reason": reason, "at": time.time()}

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
        await self._sync_if_needed(install_into_model=False)
        me = self._my_record().candidate()
        candidates = [rec.candidate() for pid, rec in self.view.items() if not self._suspected(pid, rec)] + [me]
        elig = sch.eligible(candidates, cfg.mixing.mode)
        if me not in elig:
            self._count("skipped", "not_in_sync")
            return
        if len(elig) < cfg.round.min_members:
            self._count("skipped", "too_few_peers")
            if self.exit_when_done and me.done and not self.view:
                self.request_stop("done")
            return
        plan = await self._obtain_plan(r, elig)
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

    async def _obtain_plan(self, r: int, elig: list[sch.Candidate]) -> sch.RoundPlan | None:
        cfg = self.cfg
        assert self.membership is not None
        order = sch.rendezvous_order(cfg.run_id, r, [c.peer_id for c in elig])
        rank = order.index(self.peer_id)
        start = sch.round_start(r, cfg.round.round_s) + cfg.round.settle_s
        give_up = start + cfg.round.plan_slot_s * (cfg.round.plan_candidates + 1)
        published = False
        while time.time() < give_up:
            plans = await self.membership.read_plans(r, cfg.mixing.num_fragments)
            chosen = sch.choose_plan(plans)
            if chosen is not None:
                return chosen
            if (not published and rank < cfg.round.plan_candidates
                    and time.time() >= sch.publish_time(r, rank, cfg.round.round_s, cfg.round.plan_slot_s,
                                                       cfg.round.settle_s)):
                plan = sch.make_plan(cfg.run_id, r, cfg.mixing.num_fragments, self.peer_id, elig,
                                     cfg.round.round_s, cfg.round.deadline_fraction, time.time(),
                                     cfg.mixing.mode, cfg.mixing.topology)
                if plan is None or len(plan.members) < cfg.round.min_members:
                    return None
                if rank == 0:
                    FAULTS.hit("leader_before_publish")
                published = await self.membership.publish_plan(plan, ttl_s=4 * cfg.round.round_s)
                if published:
                    continue  # read back: another candidate may have published first
            await asyncio.sleep(0.05)
        return None
