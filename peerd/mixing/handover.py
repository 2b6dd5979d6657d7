"""State hand-over: clients give the swarm's state to a reachable joiner on calls they open.

In a swarm whose every ready member is a client (nobody can dial them: the only reachable peer
left), the state lives on peers that cannot be fetched from. A reachable joiner there cannot
``FetchState`` from anyone, and starting from its own initialisation would be worse than waiting:
the clients resync from reachable peers (peerd/core/schedule.py ``eligible``), so they would all
adopt the joiner's fresh state and the swarm's training would be lost.

So the joiner waits, announcing itself (a record that is reachable and not ready), and one client
per round (rendezvous order over the round, so a dead one is replaced next round) dials it and
streams its state (``HandStateHeader``). The joiner checks the stream exactly like a ``FetchState``
reply it asked for: the donor must be a ready member in its view at the members' top revision and
majority hash (an eligible donor, as for a fetch), the header's revision and fragment
hashes must equal the donor's *signed* record, the size must fit the model, every fragment is
verified against those hashes (``verify_state``), and only then is the whole state installed at
once. Anything else is refused with a reason and counted by the transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import torch

from peerd.core import schedule as sch
from peerd.core.clock import Clock
from peerd.core.config import PeerdConfig
from peerd.core.log import get_logger
from peerd.core.state import OuterState
from peerd.mixing.sync import SyncedState, SyncError, serve_state, verify_state
from peerd.net.ports import NetworkPort
from peerd.net.transport import Rejected
from peerd.net.view import SwarmView
from peerd.proto.v1 import peer_pb2

log = get_logger("peerd.handover")


def clients_hold_the_state(view: SwarmView, state: OuterState) -> sch.Candidate | None:
    """The clients' consensus when this reachable peer must be handed their state; None otherwise.

    That is when every ready member is a client and their consensus (top revision, majority hash)
    is ahead of this peer. A reachable peer at or ahead of it (back from a checkpoint) keeps its
    own state: reachable peers define the consensus, and the clients resync from it.
    """
    ready = [rec.candidate() for rec in view.records.values() if rec.ready]
    if not view.reachable or not ready or sch.has_owner(ready):
        return None
    top = sch.eligible(ready)[0]
    return top if top.revision > state.revision else None


class HandOver:
    """Both sides of a hand-over for one peer: the waiting joiner and the giving client."""

    def __init__(self, cfg: PeerdConfig, peer_id: str, state: OuterState, network: NetworkPort, view: SwarmView,
                 clock: Clock) -> None:
        """The peer's own services."""
        self.cfg, self.peer_id, self.state, self.network = cfg, peer_id, state, network
        self.view, self.clock = view, clock
        self._waiting: asyncio.Future[SyncedState] | None = None
        self._receiving = False
        self._said = False
        self._giving: asyncio.Task[None] | None = None  # a client's hand-over in flight (one at a time)

    # ---- joiner side ----

    async def wait(self, timeout_s: float) -> SyncedState | None:
        """Announce this peer (reachable, not ready) and wait up to ``timeout_s`` for a verified state."""
        if not self._said:
            self._said = True
            log.warning("awaiting_state_handover", clients=sum(1 for r in self.view.records.values() if r.ready),
                        why="every ready member is a client (cannot be dialled): one of them hands the state over")
        self._waiting = waiting = asyncio.get_running_loop().create_future()
        end = self.clock.monotonic() + max(0.0, timeout_s)
        try:
            while not waiting.done() and self.clock.monotonic() < end:
                # Heartbeats keep this joiner's record (reachable, not ready) in the clients' views.
                await self.view.heartbeat(ready=False)
                left = min(self.cfg.dht.heartbeat_s, end - self.clock.monotonic())
                await asyncio.wait([waiting], timeout=max(0.0, left))
            return waiting.result() if waiting.done() else None
        finally:
            self._waiting = None

    async def admit(self, header: peer_pb2.HandStateHeader) -> float:
        """Check a hand-over's header before a payload byte is read; returns its deadline (Unix time).

        Raises:
            Rejected: not waiting for one, a donor that is not a ready member, a state that is not
                its signed record's, or a size that does not fit the model.
        """
        if header.run_id != self.cfg.run_id:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "wrong run_id")
        if self._waiting is None or self._waiting.done() or self._receiving:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "not waiting for a state hand-over")
        rec = self.view.records.get(header.donor)
        if rec is None or not rec.ready:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "donor is not a ready member in this peer's view")
        # Like a fetch's donors: only a member at the swarm's top revision and majority hash.
        if header.donor not in {c.peer_id for c in sch.eligible([r.candidate() for r in self.view.records.values()])}:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "donor is off the members' top revision or majority hash")
        st = header.state
        if st.revision != rec.revision or tuple(st.fragment_hashes) != rec.fragment_hashes:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "state is not the donor's signed record")
        if st.total_bytes > 8 * sum(self.state.layout.numels) or len(st.fragments) > self.state.layout.num_fragments:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "state larger than the model")
        self._receiving = True  # one hand-over at a time (released by take or by a failed stream: see done)
        return time.time() + self.cfg.transport.state_timeout_s

    async def take(self, header: peer_pb2.HandStateHeader, payload: bytes, seconds: float) -> None:
        """Verify a complete hand-over and give it to the waiting joiner (installed there, all at once).

        Raises:
            Rejected: a fragment does not match its hash, or sizes or shapes differ (nothing is kept).
        """
        try:
            synced = await asyncio.to_thread(verify_state, self.state, header.state, payload, seconds)
        except SyncError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"state refused: {exc}") from None
        finally:
            self._receiving = False
        if self._waiting is None or self._waiting.done():
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "not waiting for a state hand-over any more")
        self._waiting.set_result(synced)

    def done(self) -> None:
        """A hand-over stream ended without :meth:`take` (cut, refused): take the next one."""
        self._receiving = False

    # ---- client side ----

    def give(self, r: int) -> None:
        """Round ``r`` found no reachable member: hand this client's state to a waiting reachable joiner.

        Only the first client of the round's rendezvous order among those in sync with this one
        gives, so a joiner gets one stream per round; a failed one is retried next round by another.
        It runs in the background (one at a time): a slow transfer must not hold the round loop.
        """
        if self.view.reachable or (self._giving is not None and not self._giving.done()):
            return
        self._giving = asyncio.ensure_future(self._give(r))

    async def _give(self, r: int) -> None:
        mine = (self.state.revision, self.state.state_hash())
        joiners = [rec for rec in self.view.records.values()
                   if rec.reachable and not rec.ready and (rec.revision, rec.state_hash) != mine]
        peers = [rec.peer_id for rec in self.view.records.values()
                 if rec.ready and not rec.reachable and (rec.revision, rec.state_hash) == mine]
        if not joiners or sch.rendezvous_order(self.cfg.run_id, r, peers + [self.peer_id])[0] != self.peer_id:
            return
        for rec in joiners[:2]:
            request = peer_pb2.FetchStateRequest(run_id=self.cfg.run_id, requester=rec.peer_id,
                                                 fragment_hashes=list(rec.fragment_hashes))
            state_header, payload = await asyncio.to_thread(serve_state, self.state, self.cfg.run_id, request)
            header = peer_pb2.HandStateHeader(run_id=self.cfg.run_id, donor=self.peer_id, state=state_header)
            try:
                installed, detail = await self.network.hand_state(rec.endpoint, header, payload,
                                                                  self.cfg.transport.state_timeout_s)
            except Exception as exc:  # noqa: BLE001 - the joiner may be gone or not dialable: next round
                installed, detail = False, repr(exc)[:200]
            log.info("state_handed_over" if installed else "state_handover_failed", joiner=rec.peer_id[-8:],
                     revision=state_header.revision, bytes=len(payload), detail=detail[:200])


def install(state: OuterState, synced: SyncedState, on_installed: Callable[[list[int]], None],
            write_model: Callable[[dict[int, torch.Tensor]], None]) -> None:
    """Install a handed-over state all at once and write it into the (not yet training) model."""
    state.install(synced.revision, synced.theta, synced.momentum)
    on_installed(list(synced.theta))
    write_model(synced.theta)
