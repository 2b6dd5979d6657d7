"""The receiving side of a Streaming DiLoCo round: which shards are admitted, and where they land.

A peer registers each round it takes part in (:meth:`ShardInbox.open_round`) with the plan it
follows; the gRPC handlers then check every pushed or pulled shard header against that plan before
a byte of payload is read (:meth:`ShardInbox.admit`), and decode and check the payload before it
is stored (:meth:`ShardInbox.deliver`). A refused stream never reaches the round's state, so the
mixer (peerd/mixing/diloco.py) reduces and commits only what passed here. An owner also serves
its reduced shard to client-mode members that pull it (:meth:`ShardInbox.reduced_for`).

What fails how: a header for a round this peer has no plan for waits for the plan, but never past
the round's deadline (a fast member may push before this peer read the plan); anything that does
not match the plan (run, plan id, fragment, revision, membership, codec, shape, size, weight) is
refused with a status that names the mismatch, and counted by the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field

import grpc
import torch

from peerd.core import codec
from peerd.core.clock import RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.fragments import shard_bounds
from peerd.core.schedule import RoundPlan
from peerd.net.limits import NormGate, rms
from peerd.net.transport import Rejected
from peerd.proto.v1 import peer_pb2

MAX_WEIGHT = 1e15
CONTRIB = peer_pb2.PAYLOAD_KIND_CONTRIBUTION
REDUCED = peer_pb2.PAYLOAD_KIND_REDUCED


@dataclass
class Shard:
    """One shard's decoded values, with its weight, wire bytes and (reduced) contributors."""

    weight: float
    values: torch.Tensor
    payload: bytes = b""
    contributors: tuple[str, ...] = ()


@dataclass
class OpenRound:
    """What this peer holds of one round it takes part in."""

    plan: RoundPlan
    me: int
    bounds: list[tuple[int, int]]
    contributions: dict[str, Shard] = field(default_factory=dict)  # for the shard I own
    reduced: dict[int, Shard] = field(default_factory=dict)
    owner_pending: torch.Tensor | None = None  # my reduced shard's unsent part (owner error feedback)
    collecting: bool = True
    open: bool = True
    all_contributed: asyncio.Event = field(default_factory=asyncio.Event)
    all_reduced: asyncio.Event = field(default_factory=asyncio.Event)
    my_reduced: asyncio.Event = field(default_factory=asyncio.Event)  # an owner's reduce is done (pulls wait)


class ShardInbox:
    """Open rounds of one peer and the admission, storage and serving of their shards."""

    def __init__(self, cfg: PeerdConfig, peer_id: str, rounds: RoundClock, norm_gate: NormGate,
                 numels: list[int]) -> None:
        """``numels``: the fragments' sizes (shard bounds); ``norm_gate``: the mixer's, shared with its reduce."""
        self.cfg, self.mix, self.peer_id, self.rc = cfg, cfg.mixing, peer_id, rounds
        self.norm_gate, self.numels = norm_gate, numels
        self._rounds: dict[int, OpenRound] = {}
        self._plan_ready: dict[int, asyncio.Event] = {}

    def open_round(self, plan: RoundPlan) -> OpenRound:
        """Register a plan so that pushes for its round are admitted (and wake waiting handlers)."""
        bounds = shard_bounds(self.numels[plan.fragment], plan.owners, self.mix.block_size)
        me = plan.index_of(self.peer_id)
        rs = OpenRound(plan=plan, me=me if me < plan.owners else -1, bounds=bounds)
        self._rounds[plan.round] = rs
        self._plan_ready.setdefault(plan.round, asyncio.Event()).set()
        return rs

    def get(self, r: int) -> OpenRound | None:
        """The open round ``r``, if this peer registered it."""
        return self._rounds.get(r)

    def prune(self, r: int) -> None:
        """Forget rounds more than two before ``r`` (their handlers have long returned)."""
        for old in [k for k in self._rounds if k < r - 2]:
            self._rounds.pop(old, None)
            self._plan_ready.pop(old, None)

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Check a shard header against the local plan of its round."""
        rs = await self._planned(header.run_id, header.round, header.plan_id, "sender")
        plan = rs.plan
        if header.fragment != plan.fragment or header.revision != plan.revision:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong fragment id or revision for this round")
        sender = plan.index_of(header.sender)
        if sender < 0 or header.sender == self.peer_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "sender is not a member of this round")
        want, density = self.spec(header.kind, plan)
        if header.codec != want or header.block_size != self.mix.block_size:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"codec must be {want}/{self.mix.block_size}")
        if header.kind == CONTRIB:
            shard, deadline = rs.me, plan.collect_deadline
            if rs.me < 0:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "this member owns no shard (client mode)")
            if header.sender in rs.contributions or not rs.collecting:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "contribution duplicated or too late")
        elif header.kind == REDUCED:
            shard, deadline = sender, self.rc.late_until(plan.round, plan.deadline)
            if shard >= plan.owners:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "sender owns no shard in this round")
            if shard in rs.reduced or not rs.open:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "reduced shard duplicated or too late")
        else:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "unknown payload kind")
        start, end = rs.bounds[shard]
        if header.shard != shard or header.numel != end - start:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong shard index or shape")
        if header.payload_bytes != codec.encoded_size(want, end - start, self.mix.block_size, density):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload size does not match codec and shape")
        if not (math.isfinite(header.weight) and 0 <= header.weight <= MAX_WEIGHT):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "weight out of range")
        return deadline

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Decode, check and store a complete shard payload."""
        rs = self._rounds.get(header.round)
        if rs is None or rs.plan.plan_id != header.plan_id:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round closed")
        try:
            values = await asyncio.to_thread(codec.decode, payload, header.codec, header.numel, header.block_size,
                                             density=self.spec(header.kind, rs.plan)[1])
        except codec.CodecError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bad payload: {exc}") from None
        if not bool(torch.isfinite(values).all()):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "non-finite values")
        if header.kind == REDUCED:
            # A mean is no larger than its largest contribution, each of which its owner held within
            # factor x the round's median: a reduced shard beyond factor^2 x the median of the
            # contributions this peer holds comes from a hostile or broken owner. (Fewer than three
            # contributions: no trusted scale, accepted.)
            ref = self.norm_gate.reference(
                rs.plan.fragment, [rms(c.values) for c in list(rs.contributions.values()) if c.weight > 0])
            if ref is not None and not self.norm_gate.admits(rms(values), ref * self.norm_gate.factor):
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "reduced shard norm far outside the swarm's range")
        shard = Shard(header.weight, values, payload, tuple(header.contributors))
        if header.kind == CONTRIB:
            if not rs.collecting or header.sender in rs.contributions:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "contribution too late")
            rs.contributions[header.sender] = shard
            if len(rs.contributions) == len(rs.plan.members):
                rs.all_contributed.set()
        else:
            if not rs.open or header.shard in rs.reduced:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "reduced shard too late")
            rs.reduced[header.shard] = shard
            if len(rs.reduced) == rs.plan.owners:
                rs.all_reduced.set()

    async def reduced_for(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        """A peer pulls this owner's reduced shard: wait for the reduce, bounded by the plan.

        Client-mode members always pull; other members pull what was not pushed to them by the
        plan's deadline; a peer that missed the round pulls every shard to replay its commit
        (``Diloco.replay``) while this owner still holds the round. All get the very bytes every
        member is pushed, which are no secret among the swarm's peers (the transport admitted the call).

        Raises:
            Rejected: wrong run or plan, this peer itself, not this owner's shard, or no reduce.
        """
        rs = await self._planned(request.run_id, request.round, request.plan_id, "requester")
        plan = rs.plan
        if request.requester == self.peer_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "requester is this peer")
        if rs.me < 0 or request.shard != rs.me:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "this peer does not own that shard")
        await wait_until(self.rc, rs.my_reduced, plan.deadline)
        reduced = rs.reduced.get(rs.me)
        if reduced is None:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "no reduced shard before the round's deadline")
        start, end = rs.bounds[rs.me]
        return self.header(plan, REDUCED, rs.me, end - start, reduced.weight, reduced.contributors), reduced.payload

    async def _planned(self, run_id: str, r: int, plan_id: str, who: str) -> OpenRound:
        """Round ``r`` of this run under the plan ``plan_id``; else Rejected, naming what differs."""
        if run_id != self.cfg.run_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "wrong run_id")
        rs = await self._wait_round(r)
        if plan_id != rs.plan.plan_id:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f"{who} follows another plan")
        return rs

    async def _wait_round(self, r: int) -> OpenRound:
        rs = self._rounds.get(r)
        if rs is not None:
            return rs
        # A fast member may push before this peer has read the plan from the DHT: wait for it,
        # but never past the round's deadline, and only for rounds near the current one.
        rs_deadline = self.rc.deadline(r)
        if not self.rc.accepts_pushes_for(r, self.rc.now()):
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "round is not open")
        event = self._plan_ready.setdefault(r, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(0.0, rs_deadline - self.rc.now()))
        except TimeoutError:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "this peer has no plan for the round") from None
        finally:
            if not event.is_set():
                self._plan_ready.pop(r, None)
        return self._rounds[r]

    def spec(self, kind: int, plan: RoundPlan) -> tuple[str, float]:
        """Codec and density of a payload kind: a reduced sparse mean is denser (codec.reduced_spec)."""
        if kind == REDUCED:
            return codec.reduced_spec(self.mix.codec, self.mix.sparse_density, len(plan.members), self.mix.block_size,
                                      self.mix.reduced_density)
        return self.mix.codec, self.mix.sparse_density

    def header(self, plan: RoundPlan, kind: int, shard: int, numel: int, weight: float,
                contributors: tuple[str, ...] = ()) -> peer_pb2.ShardHeader:
        """The header of a shard this peer sends in ``plan``."""
        return peer_pb2.ShardHeader(
            run_id=self.cfg.run_id, round=plan.round, fragment=plan.fragment, revision=plan.revision,
            sender=self.peer_id, plan_id=plan.plan_id, kind=kind, shard=shard, numel=numel,
            codec=self.spec(kind, plan)[0], block_size=self.mix.block_size, weight=weight,
            contributors=list(contributors),
        )


async def wait_until(rc: RoundClock, event: asyncio.Event, deadline: float) -> None:
    """Wait for ``event`` until the round-clock time ``deadline`` at the latest (no error when it passes)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, deadline - rc.now()))


class FromOwner:
    """The sink of one pull: the header must come from the owner asked, then the mixer's own checks."""

    def __init__(self, inbox: ShardInbox, owner: str) -> None:
        self.inbox, self.owner = inbox, owner

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Refuse a header from anyone but the owner asked, then check it as a push."""
        if header.sender != self.owner or header.kind != REDUCED:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "pulled shard is not the asked owner's reduced shard")
        return await self.inbox.admit(header)

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Store the pulled shard as a pushed one."""
        await self.inbox.deliver(header, payload)
