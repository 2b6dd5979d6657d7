"""Gossip-mode churn: join by cloning a donor, serve clones, leave by handing mass to a partner.

A joiner never mixes a fresh initialisation into the swarm: it clones one donor's ``theta`` and
takes half of its mass, so the swarm's mean is unchanged. The mass moves only once the copy is
in hand: first the full state (no mass), verified; then a small *claim* (``claim_mass`` with the
copy's hashes) at which the donor splits and answers the weights and any fragment it changed
since. Splitting at the first request (``take_mass``, still served to older joiners) left the
donated half in flight for the whole download: a download that failed lost it for good (the
joiner asked the next donor, which split again), and one that crossed a round boundary left the
swarm's weight short there (sim seeds 1747, 2403 and 2843: a 0.3 s link, a 1000 B/s uplink). The
donor also splits only early enough in a round for the answer to land in it.
A peer with no ready peer in view starts the swarm (weight 1 per fragment, the common seeded
initialisation). A graceful leaver pushes its mass to a partner which absorbs it. Gossip mass is
not checkpointed: a restarted peer rejoins by cloning (its old mass is lost like a crash's,
which moves the mean by at most its disagreement with the swarm).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from peerd.core.clock import Clock
from peerd.core.config import PeerdConfig
from peerd.core.errors import EXIT_NETWORK, Counters, FatalError
from peerd.core.log import get_logger
from peerd.core.state import OuterState
from peerd.mixing.base import ModelWriter
from peerd.mixing.gossip.topology import hash_order
from peerd.mixing.sync import SyncError, request_for, serve_state, verify_state
from peerd.net.ports import NetworkPort
from peerd.net.view import SwarmView
from peerd.proto.v1 import peer_pb2

if TYPE_CHECKING:
    from peerd.mixing.gossip.round import GossipMixer

log = get_logger("peerd.gossip")
# Seconds a claim's answer is given at least to reach the joiner before the round ends: the
# donor cannot measure its one-way latency to a joiner (0.3 s links in the sim), only the swarm's.
CLAIM_FLOOR_S = 0.6
CLAIM_TRIES = 2  # round starts a claim waits for at most before splitting anyway (bounded)


class GossipChurn:
    """Join, donor side and graceful leave of one gossip mixer."""

    def __init__(self, cfg: PeerdConfig, peer_id: str, state: OuterState, network: NetworkPort, view: SwarmView,
                 clock: Clock, counters: Counters, mixer: GossipMixer) -> None:
        """``mixer`` owns the mass this service splits, resets and hands off."""
        self.cfg, self.peer_id, self.state, self.network, self.view = cfg, peer_id, state, network, view
        self.clock, self.counters, self.mixer = clock, counters, mixer

    async def join(self, write_model: ModelWriter) -> None:
        """Clone a donor and take half of its mass; start alone when nobody is ready."""
        state, gossip = self.state, self.mixer
        deadline = self.clock.monotonic() + self.cfg.transport.state_timeout_s
        while self.clock.monotonic() < deadline:
            if await self.view.membership.live_records() is None:  # a DHT error is not an empty swarm
                await asyncio.sleep(self.cfg.dht.heartbeat_s)
                continue
            await self.view.refresh()
            ready = {pid: rec for pid, rec in self.view.records.items() if rec.ready and rec.reachable}
            if not ready:
                gossip.reset([1.0] * state.layout.num_fragments)
                log.info("gossip_started", weights=gossip.mass_weights())
                return
            # Spread joiners over donors: the donor order depends on the joiner's id.
            for pid in hash_order(self.peer_id, list(ready))[:3]:
                try:
                    weights = await self._clone(ready[pid].endpoint)
                except Exception as exc:  # noqa: BLE001 - try the next donor
                    log.warning("gossip_join_failed", donor=pid[-8:], error=repr(exc)[:200])
                    continue
                gossip.reset([weights[f] for f in range(state.layout.num_fragments)])
                write_model(state.snapshot().theta)
                log.info("gossip_joined", donor=pid[-8:], weights=[round(w, 6) for w in gossip.w])
                return
            await asyncio.sleep(self.cfg.dht.heartbeat_s)
        raise FatalError("could not clone a gossip donor within transport.state_timeout_s", EXIT_NETWORK)

    async def _fetch(self, endpoint: str, req: peer_pb2.FetchStateRequest
                     ) -> tuple[peer_pb2.StateHeader, bytes, float]:
        t0 = self.clock.monotonic()
        max_bytes = 8 * sum(self.state.layout.numels) + 1024
        header, payload = await self.network.fetch_state(endpoint, req, max_bytes=max_bytes)
        return header, payload, self.clock.monotonic() - t0

    async def _clone(self, endpoint: str) -> list[float]:
        """Install a donor's state and take half of its mass; returns the weights taken per fragment.

        Raises:
            SyncError, grpc.aio.AioRpcError, OSError, TimeoutError: this donor failed (no mass moved,
            except when the claim's answer itself was lost: that half is lost like a crash's).
        """
        state, nf = self.state, self.state.layout.num_fragments
        req = request_for(state, self.cfg.run_id, self.peer_id)
        del req.fragment_hashes[:]  # a clone takes every fragment
        header, payload, secs = await self._fetch(endpoint, req)
        copy = await asyncio.to_thread(verify_state, state, header, payload, secs)
        if len(copy.theta) != nf:
            raise SyncError("donor did not send every fragment")
        claim = peer_pb2.FetchStateRequest(run_id=self.cfg.run_id, requester=self.peer_id,
                                           fragment_hashes=list(copy.fragment_hashes), claim_mass=True)
        header, payload, secs = await self._fetch(endpoint, claim)
        if not header.claimed_weights and not header.mass_weights:
            return await self._clone_legacy(endpoint)  # an older donor: it ignored the claim, nothing moved
        if len(header.claimed_weights) != nf or len(header.fragment_hashes) != nf:
            raise SyncError("donor's claim answer has no weight for every fragment")
        # What the donor sent now replaces the copy; the rest must still be the copy (hashes match).
        changed = await asyncio.to_thread(verify_state, state, header, payload, secs, None, copy.fragment_hashes)
        theta = {**copy.theta, **changed.theta}
        momentum = {**copy.momentum, **changed.momentum}
        state.install(changed.revision, theta, momentum)
        self._count_sync(copy.seconds + changed.seconds, copy.nbytes + changed.nbytes)
        return list(header.claimed_weights)

    async def _clone_legacy(self, endpoint: str) -> list[float]:
        """Clone a donor that splits at the request (``take_mass``): the protocol before claims."""
        req = request_for(self.state, self.cfg.run_id, self.peer_id)
        del req.fragment_hashes[:]
        req.take_mass = True
        header, payload, secs = await self._fetch(endpoint, req)
        synced = await asyncio.to_thread(verify_state, self.state, header, payload, secs)
        nf = self.state.layout.num_fragments
        if len(header.mass_weights) != len(header.fragments) or len(synced.theta) != nf:
            raise SyncError("donor sent no mass or not every fragment")
        self.state.install(synced.revision, synced.theta, synced.momentum)
        self._count_sync(synced.seconds, synced.nbytes)
        weights = dict(zip(header.fragments, header.mass_weights, strict=True))
        return [weights[f] for f in range(nf)]

    def _count_sync(self, seconds: float, nbytes: int) -> None:
        self.counters.syncs.append({"seconds": round(seconds, 3), "bytes": nbytes,
                                    "bytes_per_s": round(nbytes / max(seconds, 1e-9))})

    async def serve(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Donor side: serve ``theta``; split this peer's mass for a claim (or an older joiner's ``take_mass``)."""
        if request.claim_mass and request.run_id == self.cfg.run_id:
            return await self._serve_claim(request)
        weights = None
        if request.take_mass and request.run_id == self.cfg.run_id:
            weights = await self.mixer.donate()
        header, payload = await asyncio.to_thread(serve_state, self.state, self.cfg.run_id, request)
        if weights is not None:
            header.mass_weights.extend(weights[f] for f in header.fragments)
        return header, payload

    async def _serve_claim(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Split for a joiner that holds a verified copy: answer the weights and what changed since.

        The split and the answer's snapshot are one step under the mixer's lock (no exchange in
        between). The split waits for a round start (at most CLAIM_TRIES) when the answer could
        not land before the round ends: the half in flight is held by no ready peer, and the
        swarm's weight must be whole at every round boundary. An answer that cannot fit in any
        round (a large changed fragment through an upload cap) is sent at once.
        """
        mixer, rc = self.mixer, self.mixer.rc
        attempt = 0
        while True:
            async with mixer.lock:
                header, payload = await asyncio.to_thread(serve_state, self.state, self.cfg.run_id, request)
                nbytes = header.ByteSize() + len(payload)
                need = max(CLAIM_FLOOR_S, rc.phase_s(nbytes, self.view.uplink_bps))
                left = rc.start(rc.index() + 1) - rc.now()
                if left >= need or need >= rc.round_s - 0.1 or attempt == CLAIM_TRIES:
                    weights = mixer.split_locked()
                    header.claimed_weights.extend(weights)
                    log.info("gossip_donated", joiner=request.requester[-8:], weights=weights, waited=attempt)
                    return header, payload
            attempt += 1
            await asyncio.sleep(left + 0.05)  # just past the boundary: a whole round ahead

    async def leave(self) -> None:
        """Hand this peer's mass to a ready partner."""
        ready = [rec for rec in self.view.records.values() if rec.ready and rec.reachable]
        if not ready:
            return
        endpoints = [rec.endpoint for rec in sorted(ready, key=lambda r: r.peer_id)][:3]
        try:
            ok = await asyncio.wait_for(self.mixer.hand_off(endpoints), 3 * self.cfg.transport.rpc_timeout_s)
        except TimeoutError:
            ok = False
        log.info("gossip_handoff", ok=ok, candidates=len(endpoints))
