"""Gossip-mode churn: join by cloning a donor, serve clones, leave by handing mass to a partner.

A joiner never mixes a fresh initialisation into the swarm: it downloads one donor's ``theta``
with ``take_mass`` set, and the donor splits its mass in two, so the swarm's mean is unchanged.
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
                req = request_for(state, self.cfg.run_id, self.peer_id)
                del req.fragment_hashes[:]  # a clone takes every fragment
                req.take_mass = True
                t0 = self.clock.monotonic()
                try:
                    header, payload = await self.network.fetch_state(ready[pid].endpoint, req,
                                                                     max_bytes=8 * sum(state.layout.numels) + 1024)
                    synced = await asyncio.to_thread(verify_state, state, header, payload,
                                                     self.clock.monotonic() - t0)
                    if len(header.mass_weights) != len(header.fragments) or \
                            len(synced.theta) != state.layout.num_fragments:
                        raise SyncError("donor sent no mass or not every fragment")
                except Exception as exc:  # noqa: BLE001 - try the next donor
                    log.warning("gossip_join_failed", donor=pid[-8:], error=repr(exc)[:200])
                    continue
                weights = dict(zip(header.fragments, header.mass_weights, strict=True))
                state.install(synced.revision, synced.theta, synced.momentum)
                gossip.reset([weights[f] for f in range(state.layout.num_fragments)])
                write_model(synced.theta)
                self.counters.syncs.append({"seconds": round(synced.seconds, 3), "bytes": synced.nbytes,
                                            "bytes_per_s": round(synced.nbytes / max(synced.seconds, 1e-9))})
                log.info("gossip_joined", donor=pid[-8:], weights=[round(w, 6) for w in gossip.w])
                return
            await asyncio.sleep(self.cfg.dht.heartbeat_s)
        raise FatalError("could not clone a gossip donor within transport.state_timeout_s", EXIT_NETWORK)

    async def serve(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Donor side: serve ``theta``; with ``take_mass`` split this peer's mass first."""
        weights = None
        if request.take_mass and request.run_id == self.cfg.run_id:
            weights = await self.mixer.donate()
        header, payload = await asyncio.to_thread(serve_state, self.state, self.cfg.run_id, request)
        if weights is not None:
            header.mass_weights.extend(weights[f] for f in header.fragments)
        return header, payload

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
