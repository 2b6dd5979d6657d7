"""The protocol side of one peer: swarm view, one mixer and the round driver, over injected ports.

Everything with I/O arrives through the constructor: membership (a DHT or an in-memory stand-in),
the network (gRPC or an in-memory network), the clock, and the bridge to a worker. The real
daemon (:mod:`peerd.node.daemon`) and the simulation tier (tests/sim) both build this object, so
the round protocol they run is the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from peerd.core.bridge import Bridge
from peerd.core.clock import Clock, RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.errors import Counters
from peerd.core.faults import FaultInjector
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.mixing.base import Mixer, ModelWriter
from peerd.mixing.diloco import Diloco
from peerd.mixing.gossip.round import GossipMixer
from peerd.net.ports import MembershipPort, NetworkPort
from peerd.net.reach import Reachability, ReachCheck
from peerd.net.view import SwarmView
from peerd.node.driver import RoundDriver
from peerd.node.offers import PlanInbox, PlanOfferer


def build_mixer(cfg: PeerdConfig, peer_id: str, state: OuterState, bridge: Bridge, network: NetworkPort,
                view: SwarmView, rounds: RoundClock, metrics: Metrics, counters: Counters,
                faults: FaultInjector) -> Mixer:
    """The one mixer of ``mixing.mode`` (the only place the mode is branched on)."""
    if cfg.mixing.mode == "gossip":
        return GossipMixer(cfg, peer_id, state, bridge, network, view, rounds, metrics, counters)
    return Diloco(cfg, peer_id, state, bridge, network, view, rounds, metrics, counters, faults)


class PeerNode:
    """View, mixer and round driver of one peer."""

    def __init__(self, cfg: PeerdConfig, peer_id: str, endpoint: str, incarnation: int,
                 membership: MembershipPort, network: NetworkPort, state: OuterState, bridge: Bridge,
                 clock: Clock, metrics: Metrics, counters: Counters, faults: FaultInjector,
                 bootstrap: list[str], exit_when_done: bool, request_stop: Callable[[str], None]) -> None:
        """Build the services; nothing runs until :meth:`join` and :meth:`loops`."""
        self.cfg, self.peer_id, self.state, self.bridge = cfg, peer_id, state, bridge
        self.membership, self.network, self.metrics, self.counters = membership, network, metrics, counters
        self.rounds = RoundClock.from_config(cfg.round, clock)
        self.view = SwarmView(peer_id, endpoint, incarnation, membership, network, state, bridge.announced_stats,
                              clock, cfg.dht.heartbeat_s, cfg.dht.ttl_s + cfg.round.round_s, bootstrap,
                              on_lost_ready=self._lost_ready, on_refresh=self._refreshed,
                              announce_pace=cfg.pace_h > 0, ready_read_s=cfg.round.round_s + cfg.dht.heartbeat_s)
        self.view.uplink_bps = int(cfg.transport.max_upload_mbit * 1e6 / 8)  # the pacer's cap, announced
        self.mixer = build_mixer(cfg, peer_id, state, bridge, network, self.view, self.rounds, metrics, counters,
                                 faults)
        self.inbox = PlanInbox(membership, self.rounds, cfg.mixing.num_fragments,
                               lambda reason: metrics.rejected.labels(reason=f"plan_offer_{reason}").inc())
        self.offerer = PlanOfferer(network, self.rounds, peer_id, cfg.transport.rpc_timeout_s)
        self.driver = RoundDriver(cfg, self.rounds, self.view, self.mixer, membership, metrics, counters, faults,
                                  exit_when_done, request_stop, self.inbox, self.offerer)
        self.reach = ReachCheck(cfg.transport.mode, network, self.view, cfg.run_id)
        self._invalid_seen = 0

    def _lost_ready(self) -> None:
        self.driver.failure()

    def _refreshed(self, live: int, invalid: int) -> None:
        self.metrics.peers_live.set(live)
        self.metrics.invalid_records.inc(max(0, invalid - self._invalid_seen))
        self._invalid_seen = invalid

    async def start_serving(self) -> int:
        """Hand incoming pushes and fetches to the mixer, plan offers to the driver's inbox; returns the port."""
        return await self.network.start(self.mixer, self.inbox)

    async def join(self, write_model: ModelWriter) -> None:
        """Adopt the swarm's state (before the worker trains)."""
        await self.mixer.join(write_model)

    async def detect_reachability(self) -> Reachability:
        """Whether others can dial this peer (client mode when not); before :meth:`join`."""
        if self.reach.mode == "auto":
            await self.view.refresh()  # helpers come from the live records
        return await self.reach.detect()

    async def become_ready(self) -> None:
        """Start taking part in rounds, from the round the driver's loop will start with (its record says which)."""
        self.driver.start_round()
        self.view.ready = True
        await self.view.heartbeat()

    def loops(self, check: Callable[[], None]) -> dict[str, Coroutine[Any, Any, None]]:
        """The peer's never-ending tasks by name; ``check()`` raises to stop the peer."""
        return {"heartbeat": self.view.heartbeat_loop(check), "rounds": self.driver.loop(),
                "reping": self.view.reping_loop(), "reachability": self.reach.loop()}

    async def leave(self, swarm_finishing: bool) -> None:
        """Announce departure (a record that is not ready), then hand over.

        With the heartbeat's own lifetime, not a shorter one: a DHT node keeps, per subkey, the
        value that expires last, so a departure record expiring sooner than the last heartbeat was
        refused by every replica and no reader ever saw it (readers then took a peer that left on
        purpose for one that crashed, and took it back into the next plan). Readers leave a record
        that is not ready out of every plan, and it expires ``dht.ttl_s`` later.
        """
        await self.view.heartbeat(ready=False)
        await self.mixer.leave(swarm_finishing or not self.view.records)

    def status(self) -> dict[str, Any]:
        """Protocol fields of ``peerd status``."""
        return {"swarm_size": len(self.view.records) + 1, "last_round": dict(self.driver.last_round),
                "revision": self.state.revision, "state_hash": self.state.state_hash(),
                "reachability": self.reach.result.as_dict(), **self.mixer.status()}
