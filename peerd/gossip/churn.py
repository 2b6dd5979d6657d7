"""Gossip-mode churn for a daemon: join by cloning a donor, leave by handing mass to a partner.

A mixin of :class:`peerd.daemon.Daemon` (uses its view, transport, state, worker and gossip
mixer). A joiner never mixes a fresh initialisation into the swarm: it downloads one donor's
``theta`` with ``take_mass`` set, and the donor splits its mass in two, so the swarm's mean is
unchanged. A peer with no ready peer in view starts the swarm (weight 1 per fragment, the
common seeded initialisation). A graceful leaver pushes its mass to a partner which absorbs it.
Gossip mass is not checkpointed: a restarted peer rejoins by cloning (its old mass is lost like
a crash's, which moves the mean by at most its disagreement with the swarm).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peerd.errors import EXIT_NETWORK, FatalError
from peerd.gossip.topology import hash_order
from peerd.log import get_logger
from peerd.sync import SyncError, request_for, serve_state, verify_state

log = get_logger("peerd.gossip")


class GossipChurnMixin:
    """Join, donor side and graceful leave in gossip mode."""

    async def _gossip_join(self) -> bool:
        """Clone a donor and take half of its mass; start alone when nobody is ready."""
        state, transport, gossip = self.state, self.transport, self.gossip
        deadline = time.monotonic() + self.cfg.transport.state_timeout_s
        while time.monotonic() < deadline:
            if await self.membership.live_records() is None:  # a DHT error is not an empty swarm
                await asyncio.sleep(self.cfg.dht.heartbeat_s)
                continue
            await self._refresh_view()
            ready = {pid: rec for pid, rec in self.view.items() if rec.ready}
            if not ready:
                gossip.reset([1.0] * state.layout.num_fragments)
                log.info("gossip_started", weights=gossip.mass_weights())
                return True
            # Spread joiners over donors: the donor order depends on the joiner's id.
            for pid in hash_order(self.peer_id, list(ready))[:3]:
                req = request_for(state, self.cfg.run_id, self.peer_id)
                del req.fragment_hashes[:]  # a clone takes every fragment
                req.take_mass = True
                t0 = time.monotonic()
                try:
                    header, payload = await transport.fetch_state(ready[pid].endpoint, req,
                                                                  max_bytes=8 * sum(state.layout.numels) + 1024)
                    synced = await asyncio.to_thread(verify_state, state, header, payload, time.monotonic() - t0)
                    if len(header.mass_weights) != len(header.fragments) or \
                            len(synced.theta) != state.layout.num_fragments:
                        raise SyncError("donor sent no mass or not every fragment")
                except Exception as exc:  # noqa: BLE001 - try the next donor
                    log.warning("gossip_join_failed", donor=pid[-8:], error=repr(exc)[:200])
                    continue
                weights = dict(zip(header.fragments, header.mass_weights, strict=True))
                state.install(synced.revision, synced.theta, synced.momentum)
                gossip.reset([weights[f] for f in range(state.layout.num_fragments)])
                params = dict(self.worker.task.model.named_parameters())
                for f, t in synced.theta.items():  # the worker has not started: write directly
                    self.worker.layout.unflatten_into(params, f, t)
                self.counters.syncs.append({"seconds": round(synced.seconds, 3), "bytes": synced.nbytes,
                                            "bytes_per_s": round(synced.nbytes / max(synced.seconds, 1e-9))})
                log.info("gossip_joined", donor=pid[-8:], weights=[round(w, 6) for w in gossip.w])
                return True
            await asyncio.sleep(self.cfg.dht.heartbeat_s)
        raise FatalError("could not clone a gossip donor within transport.state_timeout_s", EXIT_NETWORK)

    def _gossip_state_for(self, request: Any) -> Any:
        """Donor side (a transport thread): serve ``theta``; with ``take_mass`` split mass first."""
        weights = None
        if request.take_mass and request.run_id == self.cfg.run_id:
            # The split takes the mixer's asyncio lock, so it runs on the loop; this thread waits.
            weights = asyncio.run_coroutine_threadsafe(self.gossip.donate(), self.gossip.loop).result(
                self.cfg.transport.rpc_timeout_s + self.cfg.round.round_s)
        header, payload = serve_state(self.state, self.cfg.run_id, request)
        if weights is not None:
            header.mass_weights.extend(weights[f] for f in header.fragments)
        return header, payload

    async def _gossip_leave(self) -> None:
        """Hand this peer's mass to a ready partner (not when the whole swarm is finishing)."""
        if self.exit_reason == "done" or not self.view:
            return
        ready = [rec for pid, rec in self.view.items() if rec.ready]
        endpoints = [rec.endpoint for rec in sorted(ready, key=lambda r: r.peer_id)][:3]
        try:
            ok = await asyncio.wait_for(self.gossip.hand_off(endpoints), 3 * self.cfg.transport.rpc_timeout_s)
        except TimeoutError:
            ok = False
        log.info("gossip_handoff", ok=ok, candidates=len(endpoints))
