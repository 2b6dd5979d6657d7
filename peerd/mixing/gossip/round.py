"""Gossip-mode rounds of a daemon: one confirmed pairwise AMPG exchange per round.

For a round plan (mode ``gossip``) every member derives its partner from the plan's members and
topology (:mod:`peerd.mixing.gossip.topology`), so the pairs are one fact like the plan itself. Then:

1. Snapshot the worker's fragment; take the local outer step (``lr 1, momentum 0``: adopt the
   trained parameters); with A2CiD2 flow the momentum copy; encode ``Q(z - w*anchor)``.
2. Push the message to the partner (one stream, ``PAYLOAD_KIND_GOSSIP``) while receiving the
   partner's. A client-mode member (nobody can dial it) is paired only with a reachable one
   (:func:`peerd.mixing.gossip.topology.pairs_for`) and opens both calls: it pulls the partner's
   message (``PullShard``), then pushes its own.
3. **Handshake**: commit only if this peer holds the partner's message *and* the partner
   acknowledged this peer's (the push returned OK). A partner that is slow, dead or follows
   another plan leaves the pair unconfirmed: the round is skipped with state untouched and the
   worker keeps training. Receivers take messages until the plan's deadline and senders wait for
   the acknowledgement until then too: a message over a slow or capped one-way path still counts
   (sim seed 1566: 0.3 s one way through a 1000 B/s uplink missed the collect deadline every
   round), and one taken so late that its acknowledgement misses the sender's deadline leaves
   the exchange in doubt, settled as below. Senders do not wait past the deadline: the exchange
   holds the mixer's lock, and a joiner's claim must be served early enough in the next round.
   A lost
   acknowledgement lets the partner commit alone: the side that holds the partner's message but
   no acknowledgement keeps the exchange in doubt and asks the partner for its decision after
   the round (:mod:`peerd.mixing.gossip.doubt`), so the pair's mass is conserved once it answers.
4. Commit: both sides apply exactly complementary mass updates (:mod:`peerd.mixing.gossip.mixing`),
   mirror ``theta = z/w`` into :class:`peerd.core.state.OuterState` (so checkpoints, status and
   summaries work unchanged) and merge it into the worker, replaying the steps taken meanwhile.

**Revision in gossip mode** is this peer's own count of committed exchanges and the state hash
covers its own ``theta``/momentum: both are per-peer facts, used for checkpoints and summaries,
never for eligibility (parameters legitimately differ between peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from peerd.core.bridge import Bridge, BridgeFull
from peerd.core.clock import RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.errors import Counters
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.core.schedule import RoundPlan
from peerd.core.state import OuterState
from peerd.mixing.base import ModelWriter, RoundOutcome
from peerd.mixing.gossip import a2cid2, mixing, topology
from peerd.mixing.gossip.churn import GossipChurn
from peerd.mixing.gossip.doubt import OUTCOME_SHARD, Doubt, DoubtLedger
from peerd.mixing.inbox import MAX_WEIGHT
from peerd.net.ports import NetworkPort
from peerd.net.transport import Rejected
from peerd.net.view import SwarmView
from peerd.proto.v1 import peer_pb2

log = get_logger("peerd.gossip")
GOSSIP = peer_pb2.PAYLOAD_KIND_GOSSIP
HANDOFF = peer_pb2.PAYLOAD_KIND_HANDOFF


def anchor_id(anchor: torch.Tensor) -> str:
    """Content id of an anchor: partners must use the same compression reference."""
    return hashlib.blake2b(anchor.numpy().tobytes(), digest_size=12).hexdigest()


@dataclass
class _Pair:
    plan: RoundPlan
    partner: str | None
    open: bool = True
    other_u: torch.Tensor | None = None
    other_w: float = 0.0
    received: asyncio.Event = field(default_factory=asyncio.Event)
    # With a client partner: this peer's message waits here until the client pulls it.
    outgoing: tuple[peer_pb2.ShardHeader, bytes] | None = None
    prepared: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # decided: a partner may ask for the outcome


@dataclass
class _Pending:
    z: torch.Tensor
    w: float
    m: torch.Tensor
    zt: torch.Tensor | None
    u: torch.Tensor
    payload: bytes


class GossipMixer:
    """Per-peer gossip state (mass ``z``, weight ``w`` per fragment) and its round protocol."""

    mode = "gossip"
    shared_state = False

    def __init__(self, cfg: PeerdConfig, peer_id: str, state: OuterState, bridge: Bridge, network: NetworkPort,
                 view: SwarmView, rounds: RoundClock, metrics: Metrics, counters: Counters) -> None:
        """Starts from the outer state's current (initial) parameters; they also become the anchors."""
        self.cfg, self.mix, self.peer_id, self.outer, self.bridge = cfg, cfg.mixing, peer_id, state, bridge
        self.network, self.rc, self.metrics = network, rounds, metrics
        snap = state.snapshot()
        nf = state.layout.num_fragments
        self.anchors = [snap.theta[f].clone() for f in range(nf)]
        self.anchor_ids = [anchor_id(a) for a in self.anchors]
        self.z = [snap.theta[f].double() for f in range(nf)]
        self.w = [1.0] * nf
        self.m = [snap.momentum[f].clone() for f in range(nf)]
        self.zt = [z.clone() for z in self.z] if self.mix.a2cid2 else None
        self.last_round: list[int | None] = [None] * nf
        self.lock = asyncio.Lock()  # one exchange, donation or hand-off at a time
        self.commit_lock = self.lock
        self.leaving = False
        self._last_error = ""  # why the last push failed (for the unconfirmed-round log line)
        self._rounds: dict[int, _Pair] = {}
        self._plan_ready: dict[int, asyncio.Event] = {}
        self._acc: dict[tuple[str, int], a2cid2.A2cid2Constants] = {}
        self.churn = GossipChurn(cfg, peer_id, state, network, view, rounds.clock, counters, self)
        self.doubts = DoubtLedger(self)

    def on_rejected(self, reason: str) -> None:
        """Count a refused stream."""
        self.metrics.rejected.labels(reason=reason).inc()

    # ---- join, leave, donors, checkpoints (see peerd/mixing/gossip/churn.py) ----

    async def join(self, write_model: ModelWriter) -> None:
        """Clone a donor and take half of its mass; start alone when nobody is ready."""
        await self.churn.join(write_model)

    async def catch_up(self, not_before: float) -> bool:
        """Nothing to catch up: gossip peers hold parameters of their own by design."""
        return True

    async def leave(self, swarm_finishing: bool) -> None:
        """Hand this peer's mass to a ready partner (not when the whole swarm is finishing)."""
        if not swarm_finishing:
            await self.churn.leave()

    async def admit_state(self, header: peer_pb2.HandStateHeader) -> float:
        """Gossip joiners clone a reachable donor or start alone: no state hand-overs."""
        raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "gossip mode takes no state hand-over")

    async def take_state(self, header: peer_pb2.HandStateHeader, payload: bytes, seconds: float) -> None:
        """Never reached (:meth:`admit_state` refuses)."""
        raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "gossip mode takes no state hand-over")

    def state_stream_done(self) -> None:
        """Nothing to release."""

    async def hand_over(self, r: int) -> None:
        """Gossip peers hold parameters of their own: nothing to hand over."""

    async def reduced_for(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        """A client partner pulls this peer's gossip message of the round (it cannot be dialled).

        Raises:
            Rejected: wrong run or plan, not this round's client partner, or no message in time.
        """
        if request.run_id != self.cfg.run_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "wrong run_id")
        if request.shard == OUTCOME_SHARD:  # a partner in doubt asks whether this peer committed
            return await self.doubts.answer(request)
        rs = await self._wait_round(request.round)
        if request.plan_id != rs.plan.plan_id:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "requester follows another plan")
        if request.requester != rs.partner or not rs.plan.is_client(request.requester) or request.shard != 0:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "requester is not this round's client partner")
        await self._wait_until(rs.prepared, rs.plan.deadline)
        if rs.outgoing is None or not rs.open or self.rc.now() >= rs.plan.deadline:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "no message before the round's deadline")
        return rs.outgoing

    async def state_for(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Serve ``theta``; a cloning joiner's claim (or an older joiner's ``take_mass``) gets half of the mass."""
        return await self.churn.serve(request)

    def export(self) -> dict[str, Any]:
        """Gossip mass is not checkpointed: a restarted peer rejoins by cloning."""
        return {}

    def restore(self, content: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`export`)."""

    def status(self) -> dict[str, Any]:
        """Push-sum weights per fragment."""
        return {"mass_weights": self.mass_weights()}

    def reset(self, weights: list[float]) -> None:
        """Re-derive the mass from the outer state (after a join, restore or resync)."""
        snap = self.outer.snapshot()
        for f in range(len(self.z)):
            self.w[f] = weights[f]
            self.z[f] = snap.theta[f].double() * weights[f]
            self.m[f] = snap.momentum[f].clone()
            if self.zt is not None:
                self.zt[f] = self.z[f].clone()

    def mass_weights(self) -> list[float]:
        """Current push-sum weight per fragment."""
        return list(self.w)

    # ---- receiving side (transport ShardSink) ----

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Check a gossip message (or a leaver's hand-off) before reading its payload."""
        if header.run_id != self.cfg.run_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "wrong run_id")
        if header.kind == GOSSIP and header.shard == OUTCOME_SHARD:
            # Outcomes come only as the answer to this peer's own question (doubt.OutcomeSink),
            # never pushed: an unsolicited "committed" would make it apply an exchange.
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "an exchange outcome is only taken as an answer")
        if header.fragment >= len(self.z) or header.numel != self.z[header.fragment].numel():
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong fragment id or shape")
        if header.anchor != self.anchor_ids[header.fragment]:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "different anchor (another model?)")
        if not (math.isfinite(header.weight) and 0 < header.weight <= MAX_WEIGHT):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "weight out of range")
        if header.kind == HANDOFF:
            if self.leaving:
                raise Rejected(grpc.StatusCode.UNAVAILABLE, "this peer is leaving too")
            if header.codec != "fp32" or header.payload_bytes != 4 * header.numel:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "hand-off must be fp32")
            return self.rc.now() + self.cfg.transport.rpc_timeout_s
        if header.kind != GOSSIP:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "gossip mode takes gossip payloads only")
        if header.codec != self.mix.codec or header.block_size != self.mix.block_size:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"codec must be {self.mix.codec}/{self.mix.block_size}")
        from peerd.core import codec as wire

        if header.payload_bytes != wire.encoded_size(self.mix.codec, header.numel, self.mix.block_size):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload size does not match codec and shape")
        rs = await self._wait_round(header.round)
        if header.plan_id != rs.plan.plan_id or header.fragment != rs.plan.fragment:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "sender follows another plan")
        if header.sender != rs.partner or rs.other_u is not None or not rs.open:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "not this round's partner, duplicate or too late")
        return rs.plan.deadline

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Store a partner's decoded message, or absorb a leaver's mass."""
        if header.kind == HANDOFF:
            theta = torch.frombuffer(bytearray(payload), dtype=torch.float32)
            if not bool(torch.isfinite(theta).all()):
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "non-finite values")
            await self.absorb(header.fragment, theta, header.weight)
            return
        rs = self._rounds.get(header.round)
        if rs is None or rs.plan.plan_id != header.plan_id or not rs.open or self.rc.now() > rs.plan.deadline:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round closed")
        try:
            u = await asyncio.to_thread(mixing.decode, payload, header.codec, header.numel, header.block_size)
        except ValueError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bad payload: {exc}") from None
        if not bool(torch.isfinite(u).all()) or rs.other_u is not None:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "non-finite values or duplicate")
        if not rs.open:
            # The round was decided while the payload was decoded: taking it now would acknowledge
            # a message this side did not use, and the sender would commit alone.
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round closed")
        rs.other_u, rs.other_w = u, float(header.weight)
        rs.received.set()

    async def _wait_round(self, r: int) -> _Pair:
        rs = self._rounds.get(r)
        if rs is not None:
            return rs
        # The partner may push before this peer has read the plan: wait, bounded by the round.
        if not self.rc.accepts_pushes_for(r, self.rc.now()):
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round is not open")
        event = self._plan_ready.setdefault(r, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(0.0, self.rc.deadline(r) - self.rc.now()))
        except TimeoutError:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "this peer has no plan for the round") from None
        return self._rounds[r]

    # ---- sending side ----

    def _constants(self, plan: RoundPlan) -> a2cid2.A2cid2Constants | None:
        n = len(plan.members)
        if self.zt is None or n < 2:
            return None
        key = (plan.topology, n)
        if key not in self._acc:
            self._acc[key] = a2cid2.constants(topology.expected_laplacian(plan.topology, n))
        return self._acc[key]

    def _prepare(self, plan: RoundPlan, theta_local: torch.Tensor) -> _Pending:
        p = plan.fragment
        z, w = self.z[p], self.w[p]
        theta_outer = (z / w).to(torch.float32)
        new_theta, new_m = mixing.outer_step(theta_outer, self.m[p], theta_local, self.cfg.effective_outer_lr,
                                             self.cfg.effective_outer_momentum, self.mix.nesterov)
        step = (new_theta.double() - z / w) * w  # local progress, in mass units
        z_new, zt_new = z + step, None
        acc = self._constants(plan)
        if self.zt is not None:
            zt_new = self.zt[p] + step  # a local update moves both copies (A2CiD2)
            if acc is not None:
                last = self.last_round[p]
                dt = 1.0 if last is None else (plan.round - last) / self.outer.layout.num_fragments
                z_new, zt_new = a2cid2.ode_mix(z_new, zt_new, acc.eta, min(dt, 10.0))
        payload, u = mixing.encode(z_new, w, self.anchors[p], self.mix.codec, self.mix.block_size)
        return _Pending(z_new, w, new_m, zt_new, u, payload)

    def _commit(self, plan: RoundPlan, pend: _Pending, other_u: torch.Tensor, other_w: float) -> torch.Tensor:
        p = plan.fragment
        delta = mixing.pair_delta(pend.u, pend.w, other_u, other_w, self.anchors[p])
        self.z[p] = pend.z + delta
        self.w[p] = mixing.pair_weight(pend.w, other_w)
        self.m[p] = pend.m
        acc = self._constants(plan)
        if self.zt is not None and pend.zt is not None:
            self.zt[p] = a2cid2.on_exchange(pend.zt, delta, acc.alpha_t) if acc is not None else pend.zt
        self.last_round[p] = plan.round
        theta = (self.z[p] / self.w[p]).to(torch.float32)
        self.outer.install(self.outer.revision + 1, {p: theta}, {p: self.m[p]})
        return theta

    async def replay(self, plan: RoundPlan, until: float) -> bool:
        """Nothing to replay: gossip has no shared state to fall behind on."""
        return False

    async def run(self, plan: RoundPlan, in_sync: bool = True) -> RoundOutcome:
        """Take part in a gossip round; returns after commit or skip (by ``plan.deadline``).

        ``in_sync`` is always True here: gossip has no shared state for a peer to be behind on.
        """
        pairing = topology.pairing_round(self.cfg.run_id, plan.round, plan.paced > 0)
        partner = topology.pairs_for(plan.topology, self.cfg.run_id, pairing, plan.members,
                                     plan.members[plan.owners:]).get(self.peer_id)
        rs = _Pair(plan, partner)
        self._rounds[plan.round] = rs
        self._plan_ready.setdefault(plan.round, asyncio.Event()).set()
        snap = None
        try:
            if partner is None:
                return RoundOutcome(False, "unpaired")
            if plan.is_client(partner) and plan.is_client(self.peer_id):
                return RoundOutcome(False, "client_pair")  # pairs_for never does this; a forged plan could
            try:
                # Half the collection window at most: the message must still reach the partner.
                snap = await self.bridge.call("snapshot", max(0.01, 0.5 * (plan.collect_deadline - self.rc.now())),
                                              fragment=plan.fragment)
            except (TimeoutError, BridgeFull):
                # A busy worker (a long step) must not leave its partner unconfirmed round after
                # round: exchange the mass as it stands (no new local progress this round) and
                # rebase the worker onto the result on commit, keeping all of its progress.
                snap = None
            async with self.lock:
                before = (self.z[plan.fragment] / self.w[plan.fragment]).to(torch.float32)
                pend = await asyncio.to_thread(self._prepare, plan, snap.theta if snap is not None else before)
                acked = await self._exchange(plan, rs, partner, pend)
                rs.open = False
                if not acked or rs.other_u is None:
                    log.info("gossip_unconfirmed", round=plan.round, partner=partner[-8:], acked=acked,
                             received=rs.other_u is not None, error=self._last_error)
                    if rs.other_u is not None:
                        # The partner may hold this peer's message and have committed (only the
                        # acknowledgement was lost): ask it after the round instead of guessing.
                        self.doubts.keep(Doubt(plan, partner, pend.u, pend.w, rs.other_u, rs.other_w))
                    else:
                        self.doubts.decide(plan.round, partner, False)
                    return RoundOutcome(False, "unconfirmed", missing=() if acked else (partner,))
                theta = await asyncio.to_thread(self._commit, plan, pend, rs.other_u, rs.other_w)
                self.doubts.decide(plan.round, partner, True)
                if snap is not None:
                    self.bridge.submit("merge", token=snap.token, theta=theta)
                    snap = None
                else:
                    self.bridge.submit("rebase", fragment=plan.fragment, old=before, new=theta)
            return RoundOutcome(True, "ok", 2)
        finally:
            rs.open = False
            rs.closed.set()
            if snap is not None:
                with contextlib.suppress(BridgeFull):
                    self.bridge.submit("discard", token=snap.token)
            for old in [k for k in self._rounds if k < plan.round - 2]:
                self._rounds.pop(old, None)
                self._plan_ready.pop(old, None)

    def _header(self, plan: RoundPlan, kind: int, fragment: int, weight: float, codec: str) -> peer_pb2.ShardHeader:
        return peer_pb2.ShardHeader(
            run_id=self.cfg.run_id, round=plan.round if plan else 0, fragment=fragment,
            revision=self.outer.revision, sender=self.peer_id, plan_id=plan.plan_id if plan else "",
            kind=kind, shard=0, numel=self.z[fragment].numel(), codec=codec, block_size=self.mix.block_size,
            weight=weight, anchor=self.anchor_ids[fragment])

    async def _exchange(self, plan: RoundPlan, rs: _Pair, partner: str, pend: _Pending) -> bool:
        """Send this peer's message and wait for the partner's; returns whether the partner acknowledged ours.

        Two reachable peers push to each other. With a client (nobody can dial it) the client
        opens both calls: it first pulls the partner's message (:meth:`reduced_for`), then pushes
        its own. So the reachable side holding the client's message proves the client holds its
        message too (that is its acknowledgement), and the client commits only on the push's OK:
        the handshake has the same single gap as two pushes (a lost acknowledgement).
        """
        if plan.is_client(partner):
            rs.outgoing = self._header(plan, GOSSIP, plan.fragment, pend.w, self.mix.codec), pend.payload
            rs.prepared.set()
            await self._wait_until(rs.received, plan.deadline)
            return rs.received.is_set()
        if plan.is_client(self.peer_id):
            await self._pull(plan, rs, partner)
            return rs.other_u is not None and await self._push(plan, partner, pend)
        acked = await self._push(plan, partner, pend)
        await self._wait_until(rs.received, plan.deadline)
        return acked

    async def _pull(self, plan: RoundPlan, rs: _Pair, partner: str) -> None:
        """Client side: pull the reachable partner's message, retried while the round lasts."""
        request = peer_pb2.PullRequest(run_id=self.cfg.run_id, round=plan.round, plan_id=plan.plan_id,
                                       requester=self.peer_id, shard=0)
        endpoint = plan.endpoints[plan.index_of(partner)]
        while rs.other_u is None and self.rc.now() < plan.deadline:
            try:
                await self.network.pull_shard(endpoint, request, self, plan.deadline - self.rc.now())
            except (grpc.aio.AioRpcError, OSError, Rejected, TimeoutError) as exc:
                # The partner may not have read the plan yet, or a connection broke: try again shortly.
                self._last_error = repr(exc)[:120]
                await asyncio.sleep(min(0.25, max(0.0, plan.deadline - self.rc.now())))

    async def _push(self, plan: RoundPlan, partner: str, pend: _Pending) -> bool:
        header = self._header(plan, GOSSIP, plan.fragment, pend.w, self.mix.codec)
        endpoint = plan.endpoints[plan.index_of(partner)]
        t0 = self.rc.clock.monotonic()
        try:
            await self.network.push_shard(endpoint, header, pend.payload, plan.deadline - self.rc.now())
            self.rc.net.push(len(pend.payload), self.rc.clock.monotonic() - t0)  # feeds the round clock
            return True
        except grpc.aio.AioRpcError as exc:
            self._last_error = f"{exc.code().name}: {exc.details()}"[:120]
            return False
        except OSError as exc:  # includes ChannelClosed: the partner left the view mid-call (peerd/net/wire.py)
            self._last_error = repr(exc)[:120]
            return False

    # ---- churn ----

    async def donate(self) -> list[float]:
        """A joiner clones this peer: split every fragment's mass in two; returns the joiner's weights.

        The mass is first snapped to the fp32 ``theta`` the joiner receives, so donor and joiner
        hold bit-identical halves; that snap is the only (fp32-rounding) change to the swarm's mass.
        """
        async with self.lock:
            return self.split_locked()

    def split_locked(self) -> list[float]:
        """:meth:`donate` for a caller that holds :attr:`lock` (and served the theta under it)."""
        snap = self.outer.snapshot()
        out = []
        for f in range(len(self.z)):
            z, w = mixing.split(snap.theta[f].double() * self.w[f], self.w[f])
            self.z[f], self.w[f] = z, w
            if self.zt is not None:
                self.zt[f] = z.clone()
            out.append(w)
        return out

    async def absorb(self, fragment: int, theta: torch.Tensor, weight: float) -> None:
        """Take over a leaver's mass for one fragment; the worker keeps its own local progress."""
        async with self.lock:
            snap = await self.bridge.call("snapshot", self.cfg.transport.rpc_timeout_s, fragment=fragment)
            old = (self.z[fragment] / self.w[fragment]).to(torch.float32)
            self.z[fragment], self.w[fragment] = mixing.absorb(self.z[fragment], self.w[fragment],
                                                               theta.double() * weight, weight)
            if self.zt is not None:
                self.zt[fragment] = self.zt[fragment] + theta.double() * weight
            new = (self.z[fragment] / self.w[fragment]).to(torch.float32)
            self.outer.install(self.outer.revision, {fragment: new}, {fragment: self.m[fragment]})
            # merge sets worker = theta_arg + (now - snap): keep the worker's lead over its outer theta
            self.bridge.submit("merge", token=snap.token, theta=new + (snap.theta - old))
            log.info("gossip_absorbed", fragment=fragment, weight=weight, new_weight=self.w[fragment])

    async def hand_off(self, endpoints: list[str]) -> bool:
        """Graceful leave: push every fragment's mass (fp32 theta, weight) to the first peer that takes it."""
        self.leaving = True
        async with self.lock:
            snap = self.outer.snapshot()
            for endpoint in endpoints:
                try:
                    for f in range(len(self.z)):
                        if self.w[f] == 0.0:
                            continue
                        header = self._header(None, HANDOFF, f, self.w[f], "fp32")  # type: ignore[arg-type]
                        await self.network.push_shard(endpoint, header, snap.theta[f].numpy().tobytes(),
                                                        self.cfg.transport.rpc_timeout_s)
                        self.w[f] = 0.0  # this fragment's mass now lives at the partner
                        self.z[f] = torch.zeros_like(self.z[f])
                    return True
                except (grpc.aio.AioRpcError, OSError):
                    continue
            return False

    async def _wait_until(self, event: asyncio.Event, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, deadline - self.rc.now()))
