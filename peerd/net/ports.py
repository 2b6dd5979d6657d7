"""What the node needs from the layers below it: membership (a DHT) and a network (gRPC).

Real daemons pass :class:`peerd.net.membership.Membership` and :class:`peerd.net.transport.Transport`;
the simulation tier passes in-memory stand-ins with the same methods. Keeping these two
interfaces narrow is what lets the real round protocol run on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from peerd.core.schedule import RoundPlan
from peerd.net.peer_record import PeerRecord
from peerd.net.transport import DialBackResult, Handler, PlanSink, ShardSink
from peerd.proto.v1 import peer_pb2


class MembershipPort(Protocol):
    """Heartbeat records and round plans, shared through the DHT."""

    invalid_records: int

    async def heartbeat(self, record: PeerRecord, ttl_s: float | None = None) -> bool:
        """Publish this peer's record (a short ``ttl_s`` announces departure)."""

    async def live_records(self) -> dict[str, PeerRecord] | None:
        """Unexpired, valid records by peer id; None when the lookup failed."""

    async def publish_plan(self, plan: RoundPlan, ttl_s: float) -> bool:
        """Store a round plan; False when the store failed."""

    async def read_plans(self, r: int, num_fragments: int) -> list[RoundPlan]:
        """Valid plans published for round ``r``."""

    def plan_offer(self, plan: RoundPlan, ttl_s: float) -> peer_pb2.PlanOffer:
        """This peer's plan sealed like its DHT copy, to offer to the members directly."""

    def open_plan_offer(self, offer: peer_pb2.PlanOffer, num_fragments: int) -> RoundPlan:
        """Verify an offered plan exactly like a DHT read; raises ``ValueError`` when it does not."""

    async def reping(self, peer_ids: list[str], maddrs: list[str]) -> int:
        """Ping peers that may have dropped out of the routing table."""

    async def connect(self, maddrs: list[str]) -> list[str]:
        """Dial and ping the DHT nodes at ``maddrs``; returns the peer ids that answered."""

    def p2pd_alive(self) -> bool:
        """False once the DHT is unusable."""


class NetworkPort(Protocol):
    """Calls to other peers, and the server that hands incoming ones to the mixer."""

    async def start(self, handler: Handler, plans: PlanSink | None = None) -> int:
        """Serve incoming calls through ``handler`` (plan offers through ``plans``); returns the bound port."""

    async def offer_plan(self, endpoint: str, offer: peer_pb2.PlanOffer, timeout_s: float) -> bool:
        """Hand a round plan to a member; raises ``grpc.aio.AioRpcError`` or ``OSError`` when it fails."""

    async def push_shard(self, endpoint: str, header: peer_pb2.ShardHeader, payload: bytes, timeout_s: float) -> None:
        """Stream one shard; raises ``grpc.aio.AioRpcError`` or ``OSError`` when it fails."""

    async def fetch_state(self, endpoint: str, request: peer_pb2.FetchStateRequest, max_bytes: int
                          ) -> tuple[peer_pb2.StateHeader, bytes]:
        """Download a donor's state."""

    async def pull_shard(self, endpoint: str, request: peer_pb2.PullRequest, sink: ShardSink, timeout_s: float) -> None:
        """Client mode: pull an owner's reduced shard into ``sink`` (admit, then deliver)."""

    async def hand_state(self, endpoint: str, header: peer_pb2.HandStateHeader, payload: bytes,
                         timeout_s: float) -> tuple[bool, str]:
        """Stream this client's state to a reachable joiner; (installed, detail). Raises when refused."""

    async def dial_back(self, endpoint: str, my_endpoint: str, run_id: str, dht_port: int = 0) -> DialBackResult:
        """Ask a peer to dial this one back (and probe this host's ``dht_port``). Raises when the helper fails."""

    async def forget(self, endpoints: Sequence[str]) -> None:
        """Close connections to peers that left the view (a call still on one fails with ChannelClosed)."""
