"""Plan offers: a publisher hands its round plan to every live peer directly, next to the DHT copy.

Over the internet a DHT read takes several round trips and a reader that polls for the round's
plan finds it late, after the plan slots of lower-ranked candidates have passed, which then
publish plans of their own: two plans, a split round. An offer is one hop. The receiving side
(:class:`PlanInbox`) verifies an offer exactly like a plan read from the DHT (the same sealed
record, checked by the membership's ``open_plan_offer``), keeps it only for rounds near the
current one, one plan per publisher, and wakes the round driver. The transport admits the call
first (with a swarm secret: only the plan's publisher may offer it).

Peers the plan leaves out (behind, or missing from the publisher's view) get the offer too: with
it they apply what the members commit (``Diloco.replay``) instead of downloading the state after
the round, which on a loaded box ended after the next round's view was read and left them out
again, round after round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from peerd.core.clock import RoundClock
from peerd.core.log import RemoteLog, get_logger
from peerd.core.schedule import RoundPlan
from peerd.net.ports import MembershipPort, NetworkPort
from peerd.proto.v1 import peer_pb2

log = get_logger("peerd.offers")

KEEP_ROUNDS = 2  # offered plans of rounds this far behind the current one are dropped


class PlanInbox:
    """Verified plans offered to this peer, by round and publisher."""

    def __init__(self, membership: MembershipPort, rounds: RoundClock, num_fragments: int,
                 on_refused: Callable[[str], None] = lambda reason: None) -> None:
        """``on_refused(reason)`` counts an offer that was refused (stale round, failed verification)."""
        self.membership, self.rc, self.num_fragments, self.on_refused = membership, rounds, num_fragments, on_refused
        self.plans: dict[int, dict[str, RoundPlan]] = {}
        self._arrived: dict[int, asyncio.Event] = {}
        self.remote_log = RemoteLog(log)  # refusals are caused by remote input: rate-limited lines

    async def offer_plan(self, offer: peer_pb2.PlanOffer) -> bool:
        """Verify and keep an offered plan (PlanSink); False when it is refused (counted)."""
        now = self.rc.now()
        r = int(offer.round)
        if not self.rc.accepts_pushes_for(r, now):
            self.on_refused("stale_round")
            return False
        try:
            # Verification (RSA signature, MAC, schema) is CPU work: off the loop.
            plan = await asyncio.to_thread(self.membership.open_plan_offer, offer, self.num_fragments)
        except ValueError as exc:  # RecordError, PlanError, or a mismatch with the offer
            self.membership.invalid_records += 1
            self.on_refused("invalid")
            self.remote_log.event("plan_offer_invalid", offer.publisher[-64:], "plan_offer_refused", level=logging.INFO,
                                  round=r, why=str(exc)[:120])
            return False
        current = self.rc.index(now)
        for old in [k for k in self.plans if k < current - KEEP_ROUNDS]:
            del self.plans[old]
            self._arrived.pop(old, None)
        # One entry per publisher (the sealed record is bound to it): a replay only overwrites.
        self.plans.setdefault(r, {})[plan.publisher] = plan
        self._event(r).set()
        return True

    def _event(self, r: int) -> asyncio.Event:
        return self._arrived.setdefault(r, asyncio.Event())

    def offered(self, r: int) -> list[RoundPlan]:
        """Plans offered for round ``r`` so far."""
        return list(self.plans.get(r, {}).values())

    async def wait(self, r: int, timeout_s: float) -> None:
        """Return when a new plan for round ``r`` arrives, or after ``timeout_s``."""
        event = self._event(r)
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return
        event.clear()


class PlanOfferer:
    """Hands a published plan to every other member, and to observers, in the background; lost offers are harmless."""

    def __init__(self, network: NetworkPort, rounds: RoundClock, peer_id: str, rpc_timeout_s: float) -> None:
        """Round trips of the offers feed ``rounds.net`` (the round clock's RTT estimate)."""
        self.network, self.rc, self.peer_id, self.rpc_timeout_s = network, rounds, peer_id, rpc_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, plan: RoundPlan, offer: peer_pb2.PlanOffer, observers: Iterable[str] = ()) -> None:
        """One bounded call per other member and observer endpoint (members that miss it still read the DHT)."""
        timeout = max(0.05, min(self.rpc_timeout_s, plan.collect_deadline - self.rc.now()))
        to = [e for pid, e in zip(plan.members, plan.endpoints, strict=True) if pid != self.peer_id]
        for endpoint in dict.fromkeys([*to, *observers]):
            task = asyncio.ensure_future(self._one(endpoint, offer, timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, endpoint: str, offer: peer_pb2.PlanOffer, timeout_s: float) -> None:
        t0 = self.rc.clock.monotonic()
        try:
            await self.network.offer_plan(endpoint, offer, timeout_s)
        except Exception as exc:  # noqa: BLE001 - the member still finds the plan in the DHT
            log.debug("plan_offer_failed", endpoint=endpoint, error=repr(exc)[:120])
            return
        self.rc.net.rtt(self.rc.clock.monotonic() - t0)

    def cancel(self) -> None:
        """Stop calls still in flight (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
