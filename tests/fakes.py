"""Stand-ins for a mixer's neighbours, so tests can build one without a DHT or a worker."""

from __future__ import annotations

from collections.abc import Sequence

from peerd.core.bridge import Bridge
from peerd.core.clock import SYSTEM, RoundClock
from peerd.core.config import PeerdConfig
from peerd.core.errors import Counters
from peerd.core.faults import NO_FAULTS
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.mixing.diloco import Diloco
from peerd.net.peer_record import PeerRecord
from peerd.net.view import SwarmView


class ManualClock:
    """A :class:`peerd.core.clock.Clock` that moves only when a test sets ``t`` (wall and monotonic alike)."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


class NoMembership:
    """A DHT with nobody in it."""

    invalid_records = 0

    async def heartbeat(self, record: PeerRecord, ttl_s: float | None = None) -> bool:
        return True

    async def live_records(self) -> dict[str, PeerRecord]:
        return {}

    async def publish_plan(self, plan: object, ttl_s: float) -> bool:
        return True

    async def read_plans(self, r: int, num_fragments: int) -> list:
        return []

    async def reping(self, peer_ids: list[str], maddrs: list[str]) -> int:
        return 0

    async def connect(self, maddrs: list[str]) -> list[str]:
        return []

    def p2pd_alive(self) -> bool:
        return True


class NoNetwork:
    """Outgoing calls fail as if every peer were unreachable."""

    async def start(self, handler: object) -> int:
        return 0

    async def push_shard(self, endpoint: str, header: object, payload: bytes, timeout_s: float) -> None:
        raise ConnectionRefusedError(endpoint)

    async def fetch_state(self, endpoint: str, request: object, max_bytes: int) -> tuple:
        raise ConnectionRefusedError(endpoint)

    async def forget(self, endpoints: Sequence[str]) -> None:
        return None


def make_diloco(cfg: PeerdConfig, peer_id: str, state: OuterState, bridge: Bridge | None = None,
                network: object | None = None, metrics: Metrics | None = None) -> Diloco:
    """A DiLoCo mixer on the real clock whose neighbours are the stand-ins above."""
    bridge = bridge or Bridge()
    net = network or NoNetwork()
    view = SwarmView(peer_id, "127.0.0.1:0", 1, NoMembership(), net, state, lambda: bridge.stats,  # type: ignore[arg-type]
                     SYSTEM, cfg.dht.heartbeat_s, cfg.dht.ttl_s, [], lambda: None, lambda live, invalid: None)
    return Diloco(cfg, peer_id, state, bridge, net, view, RoundClock.from_config(cfg.round), metrics or Metrics(),  # type: ignore[arg-type]
                  Counters(), NO_FAULTS)
