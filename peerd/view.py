"""This peer's view of the swarm: its heartbeat record, the live records it reads, and re-pinging.

A mixin of :class:`peerd.daemon.Daemon` (it uses the daemon's membership, state, bridge, worker,
transport, metrics and counters). Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import time

from peerd.errors import EXIT_NETWORK, FatalError
from peerd.membership import PeerRecord

# Peers that left the view are pinged every REPING_EVERY_S for REPING_FOR_S (see _reping_loop).
REPING_EVERY_S, REPING_FOR_S = 5.0, 300.0


class ViewMixin:
    """Heartbeats, the live view and keeping the DHT knitted."""

    def _my_record(self, ready: bool | None = None) -> PeerRecord:
        assert self.state is not None
        stats = self.bridge.stats
        return PeerRecord(
            peer_id=self.peer_id, endpoint=self.endpoint, incarnation=self.incarnation,
            revision=self.state.revision, state_hash=self.state.state_hash(),
            fragment_hashes=self.state.fragment_hashes, samples_per_s=stats.samples_per_s, step=stats.step,
            ready=self.ready if ready is None else ready, done=stats.done,
        )

    async def _heartbeat_once(self) -> None:
        assert self.membership is not None
        await self.membership.heartbeat(self._my_record())

    async def _refresh_view(self) -> dict[str, PeerRecord]:
        assert self.membership is not None
        records = await self.membership.live_records()
        if records is not None:
            records.pop(self.peer_id, None)
            gone = [r.endpoint for pid, r in self.view.items() if pid not in records]
            now = time.monotonic()
            self.lost.update({pid: now for pid in self.view if pid not in records})
            for pid in records:
                self.lost.pop(pid, None)
            if any(r.ready for pid, r in self.view.items() if pid not in records):
                self._failure()
            self.view = records
            if gone and self.transport is not None:
                await self.transport.forget(gone)
        self.metrics.peers_live.set(len(self.view) + 1)
        self.metrics.invalid_records.inc(self.membership.invalid_records - getattr(self, "_invalid_seen", 0))
        self._invalid_seen = self.membership.invalid_records
        return self.view

    async def _heartbeat_loop(self) -> None:
        assert self.membership is not None and self.worker is not None
        last = (time.monotonic(), self.counters.tx_bytes, self.counters.rx_bytes)
        while True:
            now = time.monotonic()
            if now - last[0] > 0:
                self.rates = {"tx_bytes_per_s": (self.counters.tx_bytes - last[1]) / (now - last[0]),
                              "rx_bytes_per_s": (self.counters.rx_bytes - last[2]) / (now - last[0])}
            last = (now, self.counters.tx_bytes, self.counters.rx_bytes)
            if not self.membership.p2pd_alive():
                raise FatalError("the p2pd daemon died; the DHT is unusable", EXIT_NETWORK)
            if self.worker.error is not None:
                raise FatalError(f"worker failed: {self.worker.error!r}")
            await self._heartbeat_once()
            await self._refresh_view()
            wall = time.monotonic() - self.started_at
            self.metrics.utilization.set(min(1.0, self.bridge.stats.busy_s / max(wall, 1e-9)))
            await asyncio.sleep(self.cfg.dht.heartbeat_s)

    async def _reping_loop(self) -> None:
        """Keep the DHT knitted: ping peers that left the view lately and the bootstrap peers.

        A peer that vanished because *we* (or it) froze is alive again in a moment, but hivemind
        dropped it from the routing table; without a ping neither side would find the other.
        """
        assert self.membership is not None
        while True:
            await asyncio.sleep(REPING_EVERY_S)
            now = time.monotonic()
            for pid, at in list(self.lost.items()):
                if now - at > REPING_FOR_S:
                    del self.lost[pid]
            recent = sorted(self.lost, key=self.lost.__getitem__, reverse=True)[:16]
            await self.membership.reping(recent, self.bootstrap)
