"""Exchanges in doubt: how one side learns, after the round, whether its partner committed.

A gossip exchange commits at a side only when it holds the partner's message *and* knows the
partner holds its own (:mod:`peerd.mixing.gossip.round`). The last message of the handshake (a
push's acknowledgement) can be lost: a partition that starts while it is in flight, a timeout on
a slow one-way link. The partner then commits while this side ends the round ``unconfirmed``,
and the swarm's push-sum mass is duplicated or lost by the pair's difference (``w`` went from 1
to 1.125 in sim seed 2917: a 0.15 s acknowledgement crossed the start of a cut). No handshake
closes that gap by a deadline (two generals), so the side that holds the partner's message but
has no acknowledgement keeps the exchange *in doubt* and asks the partner for its decision:

- **ask**: a ``PullShard`` for the round with ``shard = OUTCOME_SHARD`` (no proto change; a
  client-mode peer can only dial out, and in doubt it always is the dialling side), retried until
  the partner answers or ``RESOLVE_ROUNDS`` rounds pass;
- **answer**: once its own round is closed, the partner says ``committed`` or ``aborted`` in the
  header's ``codec`` field (no payload). A partner that is in doubt about the same exchange holds
  both messages too, so it commits it then and answers ``committed``; an unknown exchange is
  answered ``aborted`` and recorded, so it can never commit later;
- **apply**: ``committed`` adds the exchange to this side's mass now: ``z += d``, ``w += (w_o - w)/2``
  from the same decoded numbers the partner used, which is exactly minus the partner's change,
  whatever this side exchanged since (both are additive). ``aborted`` drops it.

Until the answer comes the pair's mass is off by the exchange (the checkpoint of a partition that
outlives the round sees it); a partner that never answers (crashed, gone) costs what a crash does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import torch

from peerd.core.bridge import BridgeFull
from peerd.core.log import get_logger
from peerd.core.schedule import RoundPlan
from peerd.mixing.gossip import a2cid2, mixing
from peerd.net.transport import Rejected
from peerd.proto.v1 import peer_pb2

if TYPE_CHECKING:
    from peerd.mixing.gossip.round import GossipMixer

log = get_logger("peerd.gossip")
OUTCOME_SHARD = 1  # a PullRequest for this shard asks for an exchange's outcome (gossip messages are shard 0)
COMMITTED, ABORTED = "outcome/committed", "outcome/aborted"
RESOLVE_ROUNDS = 6  # an exchange stays in doubt this many rounds at most; outcomes are kept two more
RETRY_S = (0.05, 0.25, 1.0)  # pause between questions: soon (a lost ack), then slower (a partition)
# Outcomes recorded at once. Each question about an exchange this peer never made records one
# (so it can never commit it later); callers choose the requester name, so the ledger is capped
# and a flood of questions is refused rather than grown into memory.
MAX_DECIDED = 4096


def _report(task: asyncio.Task) -> None:
    """Log a question loop that died of a bug (its expected failures are retried inside it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("gossip_doubt_failed", error=repr(task.exception())[:200])


@dataclass
class Doubt:
    """One exchange this side may owe: its own message and the partner's, as both sides decoded them."""

    plan: RoundPlan
    partner: str
    u_own: torch.Tensor
    w_own: float
    u_other: torch.Tensor
    w_other: float


class DoubtLedger:
    """Recent exchange outcomes of one gossip mixer, and the exchanges it is in doubt about."""

    def __init__(self, mixer: GossipMixer) -> None:
        self.mixer = mixer
        self.decided: dict[tuple[int, str], bool] = {}  # (round, partner) -> committed
        self.doubts: dict[tuple[int, str], Doubt] = {}
        self.resolved_late = 0  # exchanges applied after their round (for tests and summaries)
        self.given_up = 0

    def decide(self, r: int, partner: str, committed: bool) -> None:
        """Record a round's outcome with ``partner``; forget outcomes too old to be asked about."""
        self.decided[(r, partner)] = committed
        for key in [k for k in self.decided if k[0] < r - RESOLVE_ROUNDS - 2]:
            del self.decided[key]

    def keep(self, doubt: Doubt) -> None:
        """Keep an exchange in doubt and ask its partner until it answers (bounded by RESOLVE_ROUNDS)."""
        key = (doubt.plan.round, doubt.partner)
        self.doubts[key] = doubt
        task = asyncio.ensure_future(self._ask(key))
        task.add_done_callback(_report)

    async def _ask(self, key: tuple[int, str]) -> None:
        mx = self.mixer
        doubt = self.doubts[key]
        plan = doubt.plan
        request = peer_pb2.PullRequest(run_id=mx.cfg.run_id, round=plan.round, plan_id=plan.plan_id,
                                       requester=mx.peer_id, shard=OUTCOME_SHARD)
        endpoint = plan.endpoints[plan.index_of(doubt.partner)]
        give_up = mx.rc.now() + RESOLVE_ROUNDS * mx.rc.round_s
        tries = 0
        while key in self.doubts and not mx.leaving and mx.rc.now() < give_up:
            await asyncio.sleep(RETRY_S[min(tries, len(RETRY_S) - 1)])
            tries += 1
            try:  # the answer goes through OutcomeSink (admit, then settle), like a pulled message
                await mx.network.pull_shard(endpoint, request, OutcomeSink(self, doubt.partner),
                                            mx.cfg.transport.rpc_timeout_s)
            except (grpc.aio.AioRpcError, OSError, Rejected, TimeoutError) as exc:
                mx._last_error = repr(exc)[:120]  # unreachable or busy: ask again
        if self.doubts.pop(key, None) is not None:
            self.given_up += 1
            self.decided[key] = False
            log.warning("gossip_doubt_given_up", round=key[0], partner=key[1][-8:], error=mx._last_error)

    async def answer(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        """Partner side: this peer's decision on round ``request.round``'s exchange with the requester."""
        mx = self.mixer
        key = (int(request.round), request.requester)
        now_r = mx.rc.index()
        if not now_r - RESOLVE_ROUNDS - 2 <= key[0] <= now_r:
            # Outside the rounds anyone may still ask about: no answer, and nothing recorded (the
            # ledger stays bounded whatever a caller sends).
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round out of range for an outcome")
        rs = mx._rounds.get(key[0])
        if rs is not None and rs.partner == request.requester:
            # The round may still be running here: its decision is the answer, so wait for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rs.closed.wait(), max(0.0, rs.plan.deadline - mx.rc.now()) + 1.0)
            if not rs.closed.is_set():
                raise Rejected(grpc.StatusCode.UNAVAILABLE, "round still open")
        if key in self.doubts:
            await self.apply(key)  # in doubt here too: both sides hold both messages, so both commit
        if key not in self.decided and len(self.decided) >= MAX_DECIDED:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many exchange outcomes asked about")
        committed = self.decided.setdefault(key, False)  # unknown: aborted, and it can never commit now
        header = peer_pb2.ShardHeader(run_id=mx.cfg.run_id, round=key[0], sender=mx.peer_id, plan_id=request.plan_id,
                                      kind=peer_pb2.PAYLOAD_KIND_GOSSIP, shard=OUTCOME_SHARD, numel=0,
                                      codec=COMMITTED if committed else ABORTED)
        return header, b""

    def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Asking side: accept only an outcome for an exchange this peer is in doubt about."""
        if (header.kind != peer_pb2.PAYLOAD_KIND_GOSSIP or header.shard != OUTCOME_SHARD
                or header.codec not in (COMMITTED, ABORTED) or header.payload_bytes != 0 or header.numel != 0):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "malformed exchange outcome")
        if (int(header.round), header.sender) not in self.doubts:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "no exchange in doubt with this partner")
        return self.mixer.rc.now() + self.mixer.cfg.transport.rpc_timeout_s

    async def settle(self, header: peer_pb2.ShardHeader) -> None:
        """Asking side: apply (``committed``) or drop (``aborted``) the exchange in doubt."""
        key = (int(header.round), header.sender)
        if header.codec == COMMITTED:
            await self.apply(key)
        elif self.doubts.pop(key, None) is not None:
            self.decided[key] = False
            log.info("gossip_doubt_aborted", round=key[0], partner=key[1][-8:])

    async def apply(self, key: tuple[int, str]) -> None:
        """Add an exchange in doubt to this peer's mass now: exactly minus the partner's change."""
        mx = self.mixer
        async with mx.lock:
            d = self.doubts.pop(key, None)
            if d is None:
                return  # settled meanwhile (an answer and a question crossed)
            p = d.plan.fragment
            delta = mixing.pair_delta(d.u_own, d.w_own, d.u_other, d.w_other, mx.anchors[p])
            w_new = mx.w[p] + (d.w_other - d.w_own) * 0.5  # the partner's w moved by exactly minus this
            if not (math.isfinite(w_new) and w_new > 0):
                # Exchanges since left too little weight to take this one: applying it would make
                # theta = z/w meaningless. Dropped like a crash's share (logged, counted).
                self.given_up += 1
                self.decided[key] = False
                log.warning("gossip_doubt_unsafe", round=key[0], partner=key[1][-8:], weight=mx.w[p], change=w_new)
                return
            old = (mx.z[p] / mx.w[p]).to(torch.float32)
            mx.z[p], mx.w[p] = mx.z[p] + delta, w_new
            acc = mx._constants(d.plan)
            if mx.zt is not None and acc is not None:
                mx.zt[p] = a2cid2.on_exchange(mx.zt[p], delta, acc.alpha_t)
            new = (mx.z[p] / mx.w[p]).to(torch.float32)
            mx.outer.install(mx.outer.revision + 1, {p: new}, {p: mx.m[p]})
            self.decided[key] = True
            self.resolved_late += 1
            try:  # the worker keeps its own progress, moved onto the new theta
                mx.bridge.submit("rebase", fragment=p, old=old, new=new)
            except BridgeFull:
                log.warning("gossip_doubt_rebase_dropped", round=key[0], fragment=p)
            log.info("gossip_doubt_committed", round=key[0], partner=key[1][-8:], weight=w_new)


class OutcomeSink:
    """The sink of one outcome question: the answer must come from the partner asked (a pushed outcome is refused)."""

    def __init__(self, ledger: DoubtLedger, partner: str) -> None:
        """``partner``: the peer asked."""
        self.ledger, self.partner = ledger, partner

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Refuse an answer from anyone but the partner asked, then check it as an outcome."""
        if header.sender != self.partner:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "outcome is not from the partner asked")
        return self.ledger.admit(header)

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Apply or drop the exchange in doubt."""
        await self.ledger.settle(header)

