"""Streaming DiLoCo mixing: one round's exchange, reduce, outer step and merge.

Protocol for a round plan with members ``m_0..m_{n-1}`` (rendezvous order):

1. Every member snapshots its worker's fragment and computes the outer gradient
   ``delta = theta_outer - theta_worker`` plus its error-feedback residual, splits it into ``n``
   block-aligned shards and quantizes each; shard ``i`` goes to its owner ``m_i``.
2. Owner ``m_i`` waits for contributions until the plan's collect deadline, reduces the ones it
   has in plan order, in fp32, weighted by samples, quantizes the mean and sends the *same bytes*
   to every member (itself included: it uses the decoded bytes too). With a sparse codec the mean
   goes out in the format of ``codec.reduced_spec``: the contributions' union support, or, with
   ``mixing.reduced_density``, top-k again with the owner's own error feedback (below).
3. A member that holds all reduced shards by the plan's deadline commits: the identical
   outer Nesterov step on identical inputs gives bit-identical outer state on every committer.
   Otherwise it aborts: outer state, residuals and worker are left exactly as they were and the
   fragment's progress is simply sent again at its next turn.

The contribution residual is scaled by ``mixing.error_feedback_decay`` (default 1: nothing is
forgotten) before the outer gradient is added to it. With ``mixing.unsent=worker`` there is no
contribution residual: on commit the worker's merge takes the new outer state minus what the
contribution did not carry, so that part stays in the worker and is in its next outer gradient
(see both settings in peerd/core/config.py).

Owner error feedback (sparse codec with ``mixing.reduced_density``): an owner adds its residual
for the entries of its shard to the mean before the top-k, and on commit keeps what it did not
send (whole entries and rounding) for the next time it owns those entries of the fragment. Every
member still applies the same decoded bytes, so shared state stays bit-identical; the residual is
the owner's alone. It changes only on a local commit, like the contribution residual: a round
that aborts here but commits elsewhere sends that part again (a small, bounded excess), and a
residual of entries the owner no longer owns waits until it does (or is lost when it leaves).

Client mode (a member that cannot be dialled, ``plan.clients``): the plan puts such members last
and gives them no shard, so only the first ``plan.owners`` members own shards. A client pushes its
contributions to the owners like anyone else and, instead of waiting for reduced shards to be
pushed to it, opens one PullShard call per owner; the owner answers once its reduce is done, with
the same bytes it pushes to the others, and the client runs them through the same admission and
checks as a push. A round commits only if every client's contribution is in at least one reduced
shard: a client proves that it follows the plan only by contributing.

Received data is validated against the local plan before a byte of payload is read (header) and
before it is stored (decode, finiteness), so a refused stream never reaches state; that receiving
side is peerd/mixing/inbox.py. At reduce time
an owner also drops contributions whose RMS is far above its own and recent ones (peerd/net/limits.py
NormGate), so one member cannot swamp the outer step with a huge but well-formed update.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import torch

from peerd.core import codec
from peerd.core.bridge import Bridge, BridgeFull, Snapshot
from peerd.core.clock import RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.errors import Counters
from peerd.core.faults import FaultInjector
from peerd.core.metrics import Metrics
from peerd.core.schedule import RoundPlan
from peerd.core.state import OuterState
from peerd.mixing.base import ModelWriter, RoundOutcome
from peerd.mixing.inbox import CONTRIB, REDUCED, FromOwner, OpenRound, Shard, ShardInbox, wait_until
from peerd.mixing.pushes import push_until
from peerd.mixing.resync import StateSync
from peerd.mixing.sync import serve_state
from peerd.net.limits import NormGate, rms
from peerd.net.ports import NetworkPort
from peerd.net.transport import Rejected
from peerd.net.view import SwarmView
from peerd.proto.v1 import peer_pb2

MAX_TRACKED = 256
LATE_COLLECT_SHARE = 0.25  # of the time left to the deadline, for contributions to a plan taken late


def outer_step(plan: RoundPlan, cfg: PeerdConfig) -> tuple[float, float]:
    """(learning rate, momentum) of a round's outer step: the configured ones, plain averaging in a final round.

    A final round (every member done training) ends the run's model. With the paced default
    (Nesterov, lr 0.8, momentum 0.5) its step also carried momentum: a final round of a fragment
    whose last steps an earlier final round had already synced has a zero outer gradient, and
    still moved the fragment by 0.2 of the momentum buffer, past the workers' average. Paced
    4-daemon runs of 1000 steps that ended with such a round reached a final eval loss of 1.878
    on average (10 runs), those that did not 1.836 (8 runs); 4 runs with the final steps plain,
    1.820 (``bench.wan_rounds --steps 1000``, 2026-12-01). Plain averaging ends the run on the
    workers' average, and the same for every member (the plan says ``final``).
    """
    if plan.final:
        return 1.0, 0.0
    return cfg.effective_outer_lr, cfg.effective_outer_momentum


class Diloco:
    """The Streaming DiLoCo mixer of one peer: rounds, shard pushes, state serving and resync."""

    mode = "diloco"
    shared_state = True

    def __init__(self, cfg: PeerdConfig, peer_id: str, state: OuterState, bridge: Bridge, network: NetworkPort,
                 view: SwarmView, rounds: RoundClock, metrics: Metrics, counters: Counters,
                 faults: FaultInjector) -> None:
        """Dependencies are the peer's own services; nothing is attached later."""
        self.cfg = cfg
        self.mix = cfg.mixing
        self.peer_id = peer_id
        self.state = state
        self.bridge = bridge
        self.network = network
        self.view = view
        self.rc = rounds
        self.metrics = metrics
        self.faults = faults
        self.residuals = [torch.zeros(n) for n in state.layout.numels]
        # Owner error feedback (sparse reduced mean): what this peer, as an owner, left out of the
        # means it sent, by fragment and position; see the module docstring.
        self.owner_residuals = [torch.zeros(n) for n in state.layout.numels]
        # Per member: committed rounds whose every reduced shard includes its contribution (status;
        # shows that a client-mode peer's work is counted, not just that it committed).
        self.included: dict[str, int] = {}
        self.commits = 0
        self.late_commits = 0  # commits whose last reduced shard came after the plan's deadline
        self.replays = 0  # missed rounds caught up on by replaying their reduced shards (replay)
        # Held from an outer-state commit until its worker merge is queued, so a checkpoint never
        # pairs a new outer state with a worker that has not merged it yet.
        self.commit_lock = asyncio.Lock()
        self.norm_gate = NormGate(cfg.security.norm_factor, cfg.security.norm_history)
        self.inbox = ShardInbox(cfg, peer_id, rounds, self.norm_gate, state.layout.numels)
        self.sync = StateSync(cfg, peer_id, state, network, view, bridge, rounds.clock, metrics, counters,
                              self._clear_residuals)

    def on_rejected(self, reason: str) -> None:
        """Count a refused stream or dropped contribution."""
        self.metrics.rejected.labels(reason=reason).inc()

    def _clear_residuals(self, fragments: list[int]) -> None:
        for f in fragments:
            self.residuals[f].zero_()

    # ---- join, leave, donors, checkpoints ----

    async def join(self, write_model: ModelWriter) -> None:
        """Adopt the swarm's outer state before training (see :class:`StateSync`)."""
        await self.sync.initial(write_model)

    async def catch_up(self, not_before: float) -> bool:
        """A laggard fetches what the others commit in the current round, after its deadline."""
        return await self.sync.if_needed(not_before=not_before)

    async def leave(self, swarm_finishing: bool) -> None:
        """Nothing to hand over: every committed member holds the same outer state."""

    async def state_for(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Serve the fragments a joiner or laggard lacks (serialised in a thread)."""
        return await asyncio.to_thread(serve_state, self.state, self.cfg.run_id, request)

    # A client hands the state to a reachable joiner of an all-client swarm (peerd/mixing/handover.py).

    async def admit_state(self, header: peer_pb2.HandStateHeader) -> float:
        """Check a state hand-over's header (only while this joiner waits for one)."""
        return await self.sync.handover.admit(header)

    async def take_state(self, header: peer_pb2.HandStateHeader, payload: bytes, seconds: float) -> None:
        """Verify a complete hand-over and give it to the waiting join."""
        await self.sync.handover.take(header, payload, seconds)

    def state_stream_done(self) -> None:
        """A hand-over stream ended (taken or not): the next one may come."""
        self.sync.handover.done()

    async def hand_over(self, r: int) -> None:
        """Round ``r`` has no reachable member: as a client, hand the state to a waiting reachable joiner."""
        self.sync.handover.give(r)

    def export(self) -> dict[str, Any]:
        """Error-feedback residuals (the outer state is saved by the checkpointer itself)."""
        return {"residuals": [r.clone() for r in self.residuals]}

    def restore(self, content: dict[str, Any]) -> None:
        """Load residuals saved by :meth:`export` (absent: zeros)."""
        saved = content.get("residuals")
        if saved is not None and [r.numel() for r in saved] == [r.numel() for r in self.residuals]:
            self.residuals = [r.clone() for r in saved]

    def status(self) -> dict[str, Any]:
        """Committed rounds and, per member, how many of them included its contribution everywhere."""
        return {"contributions": {"commits": self.commits, "late_commits": self.late_commits, "replays": self.replays,
                                  "included": dict(self.included)}}

    # ---- receiving side (gRPC handlers) ----

    # ---- receiving side (gRPC handlers; peerd/mixing/inbox.py) ----

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Check a shard header against the local plan of its round."""
        return await self.inbox.admit(header)

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Decode, check and store a complete shard payload."""
        await self.inbox.deliver(header, payload)

    async def reduced_for(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        """A client-mode member pulls this owner's reduced shard (waits for the reduce, bounded by the plan)."""
        return await self.inbox.reduced_for(request)

    # ---- sending side ----

    async def _pull_all(self, plan: RoundPlan, rs: OpenRound, shards: list[int] | None = None,
                        until: float | None = None) -> int:
        """Pull owners' reduced shards (default: every one, as a client does), retried while the round lasts."""
        if until is None:
            until = self.rc.late_until(plan.round, plan.deadline)

        async def one(idx: int) -> bool:
            request = peer_pb2.PullRequest(run_id=self.cfg.run_id, round=plan.round, plan_id=plan.plan_id,
                                           requester=self.peer_id, shard=idx)
            sink = FromOwner(self.inbox, plan.members[idx])
            while idx not in rs.reduced and self.rc.now() < until:
                try:
                    await self.network.pull_shard(plan.endpoints[idx], request, sink, until - self.rc.now())
                except (grpc.aio.AioRpcError, OSError, Rejected, TimeoutError):
                    # The owner may not have read the plan yet, or a connection broke: try again shortly.
                    await asyncio.sleep(min(0.25, max(0.0, until - self.rc.now())))
            return idx in rs.reduced

        return sum(await asyncio.gather(*(one(i) for i in (range(plan.owners) if shards is None else shards))))

    async def replay(self, plan: RoundPlan, until: float) -> bool:
        """Catch up on one round this peer missed by applying its reduced shards, as its committers did.

        ``plan`` must start from this peer's state (its revision and hash): then the same decoded
        bytes through the same outer step give the committers' state bit for bit, for one small
        shard per owner instead of a state download (which took 1-4 s on a loaded box, long enough
        to miss the next round as well, and the one after). Shards this peer already holds (it
        was a member that missed some) are kept; the others are pulled from their owners until
        ``until`` (round clock time). False, state untouched, when a shard is not had by then.

        Whether the swarm committed ``plan`` is the caller's to know (its view shows the members
        one revision ahead); if another plan of that round was committed, this peer's hash is off
        the majority afterwards and it resyncs as any forked peer does. A contribution of its own
        that is in those shards stays in its worker too (the worker is rebased, not merged): the
        bounded excess of a round that aborts here but commits elsewhere, as the module says.
        """
        state, p = self.state, plan.fragment
        if plan.mode != self.mode or state.revision != plan.revision or state.state_hash() != plan.state_hash:
            return False
        rs = self.inbox.get(plan.round)
        if rs is None or rs.plan.plan_id != plan.plan_id:
            rs = self.inbox.open_round(plan)
        rs.collecting, rs.open = False, True
        try:
            missing = [i for i in range(plan.owners) if i not in rs.reduced]
            if missing:
                await self._pull_all(plan, rs, missing, until)
        finally:
            rs.open = False
        if len(rs.reduced) < plan.owners or state.revision != plan.revision:
            return False
        old_theta = state.theta(p)
        async with self.commit_lock:
            await asyncio.to_thread(self._commit, rs, None)
            self.bridge.submit("rebase", fragment=p, old=old_theta, new=state.theta(p))
        self.replays += 1
        return True

    async def _push_all(self, plan: RoundPlan, items: list[tuple[int, peer_pb2.ShardHeader, bytes]],
                        deadline: float) -> int:
        """Push each item to its member, each repeated until it lands or ``deadline`` (peerd/mixing/pushes.py)."""
        results = await asyncio.gather(*(push_until(self.network, self.rc, plan.endpoints[idx], header, payload,
                                                    deadline) for idx, header, payload in items))
        return sum(results)

    async def run(self, plan: RoundPlan, in_sync: bool = True) -> RoundOutcome:
        """Take part in a round as a member; returns after commit or abort (by ``rc.late_until``).

        ``in_sync=False``: this member is behind the plan's revision (it missed a commit that the
        plan's publisher counted it in). It cannot contribute or commit, but its part of the round
        does not need its state: it sends weightless contributions (a client's proof that it follows
        the plan) and, as an owner, reduces and sends its shard from the others' contributions. The
        round then commits for everyone else instead of aborting on its missing shard; this member
        returns ``not_in_sync`` once its sends are done and resyncs.
        """
        rs = self.inbox.open_round(plan)
        me, bounds, n, p = rs.me, rs.bounds, len(plan.members), plan.fragment
        late = self.rc.late_until(plan.round, plan.deadline)  # reduced shards may arrive until then
        owners = plan.owners
        snap: Snapshot | None = None
        try:
            if in_sync and self.state.revision != plan.revision:
                return RoundOutcome(False, "revision_moved")
            old_theta = self.state.theta(p)
            if in_sync:  # behind: its worker's delta is against another outer state, worth nothing here
                snap = await self._snapshot(plan, owner=me >= 0)
            weight = float(snap.samples) if snap is not None else 0.0
            payloads, pending = await asyncio.to_thread(self._encode_contribution, p, snap, bounds)
            if me >= 0:
                own = payloads[me]
                rs.contributions[self.peer_id] = Shard(
                    weight, await asyncio.to_thread(codec.decode, own, self.mix.codec,
                                                    bounds[me][1] - bounds[me][0], self.mix.block_size,
                                                    density=self.mix.sparse_density))
                if len(rs.contributions) == n:
                    rs.all_contributed.set()
            self.faults.hit("before_send")
            sends = [(i, self.inbox.header(plan, CONTRIB, i, bounds[i][1] - bounds[i][0], weight), payloads[i])
                     for i in range(owners) if i != me]
            send_task = asyncio.create_task(self._push_all(plan, sends, plan.collect_deadline))
            contributors = 0
            if not in_sync and me < 0:  # behind, client: its weightless contributions were its whole part
                await send_task
                return RoundOutcome(False, "not_in_sync")
            if me < 0:  # client mode: no shard to reduce; pull every owner's reduced shard
                await self._pull_all(plan, rs)
                await send_task
                contributors = min((len(s.contributors) for s in rs.reduced.values()), default=0)
            else:
                # A plan taken late (its offer came after the collection closed): contributions
                # waiting here for it are admitted now, so give them part of what is left.
                now = self.rc.now()
                collect_until = plan.collect_deadline if now < plan.collect_deadline else (
                    now + LATE_COLLECT_SHARE * max(0.0, plan.deadline - now))
                await wait_until(self.rc, rs.all_contributed, collect_until)
                rs.collecting = False
                reduced = await asyncio.to_thread(self._reduce, rs, in_sync)
                rs.reduced[me] = reduced
                rs.my_reduced.set()
                if len(rs.reduced) == owners:
                    rs.all_reduced.set()
                # Clients are not dialled: they pull this shard (reduced_for) on calls of their own.
                out = [(i, self.inbox.header(plan, REDUCED, me, bounds[me][1] - bounds[me][0], reduced.weight,
                                        reduced.contributors), reduced.payload) for i in range(owners) if i != me]
                await self._push_all(plan, out, late)
                await send_task
                contributors = len(reduced.contributors)
                if not in_sync:
                    return RoundOutcome(False, "not_in_sync", contributors)
            self.faults.hit("after_send")
            await wait_until(self.rc, rs.all_reduced, plan.deadline)
            if len(rs.reduced) < owners:
                # Pushes that have not landed by the deadline (a busy owner, a lost stream) are
                # fetched by this member from their owners, while the pushes still may land.
                await self._pull_all(plan, rs, [i for i in range(owners) if i not in rs.reduced])
            await wait_until(self.rc, rs.all_reduced, late)
            rs.open = False
            if len(rs.reduced) < owners:
                missing = tuple(m for i, m in enumerate(plan.members[:owners]) if i not in rs.reduced)
                return RoundOutcome(False, "missing_reduced_shards", contributors, missing)
            # A client sends no reduced shard: its contribution, in some owner's reduce, is the only
            # sign that it follows this plan. Without one the owners could commit alone while it
            # followed another plan or none (a split state at one revision). Every member sees the
            # same reduced shards, so every member decides alike and suspects the same clients.
            absent = tuple(m for m in plan.members[owners:]
                           if not any(m in rs.reduced[i].contributors for i in range(owners)))
            if absent:
                return RoundOutcome(False, "missing_client_contribution", contributors, absent)
            self.commits += 1
            if self.rc.now() > plan.deadline:
                self.late_commits += 1
            for m in plan.members:
                if all(m in rs.reduced[i].contributors for i in range(owners)):
                    self.included[m] = self.included.get(m, 0) + 1
            if len(self.included) > 4 * MAX_TRACKED:  # members come and go: keep the counts bounded
                self.included = dict(sorted(self.included.items(), key=lambda kv: -kv[1])[:MAX_TRACKED])
            async with self.commit_lock:
                await asyncio.to_thread(self._commit, rs, pending)
                # Committed: from here on the worker must get the merge even if it is slow, so it
                # is queued without waiting for it (the worker applies commands in order).
                if snap is not None:
                    merged = self.bridge.submit("merge", token=snap.token, theta=self._merge_theta(p, pending))
                    self.bridge.merging(p, snap.steps, merged)
                    self.metrics.sync_interval.observe(snap.steps)
                    snap = None
                else:
                    self.bridge.submit("rebase", fragment=p, old=old_theta, new=self.state.theta(p))
            return RoundOutcome(True, "ok", contributors)
        finally:
            rs.open = rs.collecting = False
            if snap is not None:
                with contextlib.suppress(BridgeFull):  # the worker drops stale snapshots itself
                    self.bridge.submit("discard", token=snap.token)
            self.inbox.prune(plan.round)

    async def _snapshot(self, plan: RoundPlan, owner: bool) -> Snapshot | None:
        """The worker's fragment for this round's contribution, or None when it does not come in time."""
        try:
            # Leave the contribution time to travel: a snapshot that comes later is useless.
            # (at least its time through this peer's own upload cap, measured or not)
            push, cap = self._push_bytes(plan), self.view.uplink_bps
            travel = self.rc.phase_s(push, cap) if self.rc.net.rtt_s is not None else self.rc.capped_s(push, cap)
            return await self.bridge.call("snapshot", self.rc.snapshot_wait(plan.collect_deadline, travel, owner),
                                          fragment=plan.fragment)
        except (TimeoutError, BridgeFull):
            # A busy worker (a long step, a loaded box) must not abort the round for everyone:
            # this member still owns its shard, so it takes part with a weightless zero
            # contribution and, on commit, rebases its worker onto the new outer state.
            return None

    def _push_bytes(self, plan: RoundPlan) -> int:
        """Bytes this member pushes as contributions in ``plan`` (its fragment less its own shard)."""
        n = len(plan.members)
        size = codec.encoded_size(self.mix.codec, self.state.layout.numels[plan.fragment], self.mix.block_size,
                                  self.mix.sparse_density)
        return size * max(1, n - 1) // max(1, n)

    def _encode_contribution(
        self, p: int, snap: Snapshot | None, bounds: list[tuple[int, int]]
    ) -> tuple[list[bytes], torch.Tensor | None]:
        if snap is None:  # weightless: zeros, and the residual stays as it is
            return [codec.encode(torch.zeros(end - start), self.mix.codec, self.mix.block_size, self.mix.sparse_density)
                    for start, end in bounds], None
        delta = self.state.theta(p) - snap.theta
        residual = self.residuals[p] if self.mix.error_feedback else None
        if residual is not None and self.mix.error_feedback_decay != 1.0:  # a new tensor: a round
            residual = residual * self.mix.error_feedback_decay  # that aborts keeps the old one
        payloads, pending = [], torch.zeros_like(delta)
        for start, end in bounds:
            res = residual[start:end] if residual is not None else None
            payload, new_res = codec.encode_with_feedback(delta[start:end], res, self.mix.codec, self.mix.block_size,
                                                          self.mix.sparse_density)
            payloads.append(payload)
            pending[start:end] = new_res
        return payloads, pending

    def _merge_theta(self, p: int, pending: torch.Tensor | None) -> torch.Tensor:
        """What the worker's merge takes as fragment ``p``'s new base after a commit.

        The new outer parameters; with ``mixing.unsent=worker`` less what this member's
        contribution did not carry (``pending``), which then stays in the worker, not the residual.
        """
        theta = self.state.theta(p)
        if self.mix.unsent == "worker" and pending is not None:
            theta = theta - pending
        return theta

    def _reduce(self, rs: OpenRound, in_sync: bool = True) -> Shard:
        """The weighted mean of the plausible contributions to this owner's shard, encoded and decoded.

        Owner error feedback (the residual added to the mean, kept on commit) only while in sync:
        a behind owner does not commit, so what it added would be sent again later.
        """
        start, end = rs.bounds[rs.me]
        feedback = in_sync and self._owner_feedback()
        acc = torch.zeros(end - start, dtype=torch.float32)
        total = 0.0
        names = self._plausible(rs)
        for name in names:  # plan order: the same arithmetic on every machine
            c = rs.contributions[name]
            if c.weight > 0:
                acc.add_(c.values * c.weight)
                total += c.weight
        spec, density = self.inbox.spec(REDUCED, rs.plan)
        if total > 0:
            acc.div_(total)
            if feedback:
                acc.add_(self.owner_residuals[rs.plan.fragment][start:end])
        payload = codec.encode(acc, spec, self.mix.block_size, density)
        values = codec.decode(payload, spec, end - start, self.mix.block_size, density=density)
        if total > 0 and feedback:
            rs.owner_pending = acc - values
        return Shard(total, values, payload, names)

    def _owner_feedback(self) -> bool:
        """Whether owners keep what a sparse reduced mean leaves out (``mixing.reduced_density``)."""
        return self.mix.reduced_density is not None and self.mix.codec in codec.SPARSE

    def _plausible(self, rs: OpenRound) -> tuple[str, ...]:
        """Contributors in plan order, less those the norm gate drops (counted; see NormGate).

        One RMS per contribution and one reference per round, so the verdict on a contribution
        does not depend on the order the others are looked at in.
        """
        present = [m for m in rs.plan.members if m in rs.contributions]
        norms = {m: rms(rs.contributions[m].values) for m in present if rs.contributions[m].weight > 0}
        ref = self.norm_gate.reference(rs.plan.fragment, list(norms.values()))
        kept = []
        for name in present:
            value = norms.get(name)  # None: weightless, it does not move the mean whatever its values
            if value is not None and name != self.peer_id and not self.norm_gate.admits(value, ref):
                self.on_rejected("norm_outlier")
                continue
            if value is not None:
                self.norm_gate.record(rs.plan.fragment, value)
            kept.append(name)
        return tuple(kept)

    def _commit(self, rs: OpenRound, pending_residual: torch.Tensor | None) -> None:
        plan = rs.plan
        mean = torch.cat([rs.reduced[i].values for i in range(plan.owners)])
        if sum(rs.reduced[i].weight for i in range(plan.owners)) > 0:
            lr, momentum = outer_step(plan, self.cfg)
            self.state.apply_outer_step(plan.fragment, mean, lr, momentum, self.cfg.mixing.nesterov, plan.revision)
        else:
            self.state.bump_revision(plan.revision)
        if self.mix.error_feedback and pending_residual is not None and self.mix.unsent == "residual":
            self.residuals[plan.fragment] = pending_residual
        elif pending_residual is not None and self.mix.unsent == "worker":  # a residual restored from a
            self.residuals[plan.fragment].zero_()  # checkpoint of unsent=residual: carried once, not every round
        if rs.owner_pending is not None:
            start, end = rs.bounds[rs.me]
            self.owner_residuals[plan.fragment][start:end] = rs.owner_pending



