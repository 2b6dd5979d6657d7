"""In-memory network and DHT for the simulation tier.

:class:`SimNetwork` connects the peers' real mixers: a push or a state fetch is delivered to the
destination's handler after a per-link latency (plus seeded jitter) and serialisation time at the
link's bandwidth; links can lose calls, be cut (partitions) or lead to a crashed peer. A peer in
``clients`` is behind a NAT: nobody can open a call to it (it still opens its own, and pulls
reduced shards on them). A stalled
peer (a busy box) handles nothing until its stall ends. :class:`SimDht` is one global store
with TTLs on virtual time; each peer's :class:`SimMembership` reaches it after a seeded delay.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import grpc
import msgpack

from peerd.core.schedule import RoundPlan, plan_from_record
from peerd.net.peer_record import PeerRecord
from peerd.net.transport import DialBackResult, Handler, PlanSink, Rejected, checksum
from peerd.proto.v1 import peer_pb2


class SimRpcError(ConnectionError):
    """A simulated call failed (unreachable, lost, refused, timed out), with the status a real call would carry."""

    def __init__(self, message: str, status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.status = status  # read by peerd.net.wire.call_status (retry decisions)


@dataclass(frozen=True)
class Link:
    """One direction of a link."""

    latency_s: float = 0.005
    jitter_s: float = 0.002
    bandwidth_bps: float = 1e9
    loss: float = 0.0


class SimNetwork:
    """Peers' handlers by endpoint, links, partitions, crashes and stalls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random, default: Link) -> None:
        self.loop, self.rng, self.default = loop, rng, default
        self.handlers: dict[str, tuple[str, Handler]] = {}  # endpoint -> (peer id, handler)
        self.plan_sinks: dict[str, PlanSink] = {}  # endpoint -> the peer's plan inbox
        self.links: dict[tuple[str, str], Link] = {}
        self.cut: set[frozenset[str]] = set()
        self.down: set[str] = set()
        self.stalled_until: dict[str, float] = {}
        self.clients: set[str] = set()  # peer ids that cannot be dialled (behind a NAT)
        # peer id -> upload cap in bytes/s: its payload bytes leave one after another at that rate
        # (the transport's pacer paces payload chunks only; headers and control calls are tiny).
        self.uplink: dict[str, float] = {}
        self._uplink_free: dict[str, float] = {}  # peer id -> when its capped uplink is next idle
        self.calls = 0

    def link(self, a: str, b: str) -> Link:
        return self.links.get((a, b), self.default)

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    async def gate(self, peer: str) -> None:
        """Wait out a stall of ``peer`` (its loop is frozen: it does nothing meanwhile)."""
        while self.loop.time() < self.stalled_until.get(peer, 0.0):
            await asyncio.sleep(self.stalled_until[peer] - self.loop.time())

    async def hop(self, a: str, b: str, nbytes: int, first: bool = True, payload: bool = False) -> None:
        """One message from ``a`` to ``b``: latency and jitter (``first`` of a stream), serialisation time.

        Later messages of a stream follow the first one back to back: they add only their own
        serialisation time, as chunks of a gRPC stream do. A ``payload`` from a peer with an upload
        cap waits for the cap: concurrent payloads share it (first come, first served).
        """
        link = self.link(a, b)
        delay = link.latency_s + self.rng.random() * link.jitter_s if first else 0.0
        wire = 8 * nbytes / link.bandwidth_bps
        cap = self.uplink.get(a, 0.0) if payload else 0.0
        if cap > 0:
            now = self.loop.time()
            done = max(now, self._uplink_free.get(a, 0.0)) + nbytes / cap
            self._uplink_free[a] = done
            wire = max(wire, done - now)
        await asyncio.sleep(delay + wire)
        if not self.reachable(a, b) or (link.loss and self.rng.random() < link.loss):
            raise SimRpcError(f"{a}->{b}: lost")

    def resolve(self, endpoint: str) -> tuple[str, Handler]:
        found = self.handlers.get(endpoint)
        if found is None:
            raise SimRpcError(f"{endpoint}: connection refused")
        if found[0] in self.clients:
            raise SimRpcError(f"{endpoint}: no route (behind a NAT)")
        return found


class SimTransport:
    """One peer's network port (see :class:`peerd.net.ports.NetworkPort`)."""

    def __init__(self, net: SimNetwork, peer_id: str, endpoint: str) -> None:
        self.net, self.peer_id, self.endpoint = net, peer_id, endpoint
        self.tx_bytes = 0

    async def start(self, handler: Handler, plans: PlanSink | None = None) -> int:
        self.net.handlers[self.endpoint] = (self.peer_id, handler)
        if plans is not None:
            self.net.plan_sinks[self.endpoint] = plans
        return int(self.endpoint.rsplit(":", 1)[1])

    async def forget(self, endpoints: Sequence[str]) -> None:
        return None

    async def _call(self, endpoint: str, timeout_s: float, body: object) -> object:
        net = self.net
        net.calls += 1
        try:
            return await asyncio.wait_for(body, max(timeout_s, 0.001))  # type: ignore[arg-type]
        except TimeoutError:
            raise SimRpcError(f"{endpoint}: deadline exceeded", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except Rejected as rej:
            raise SimRpcError(f"{endpoint}: {rej.code.name}: {rej.detail}", rej.code) from None

    async def push_shard(self, endpoint: str, header: peer_pb2.ShardHeader, payload: bytes, timeout_s: float) -> None:
        header.payload_bytes = len(payload)
        header.checksum = checksum(payload)
        sent = peer_pb2.ShardHeader()
        sent.CopyFrom(header)

        async def body() -> None:
            dst, handler = self.net.resolve(endpoint)
            await self.net.gate(self.peer_id)
            await self.net.hop(self.peer_id, dst, 256)
            await self.net.gate(dst)
            deadline = await handler.admit(sent)
            await self.net.hop(self.peer_id, dst, len(payload), first=False, payload=True)
            await self.net.gate(dst)
            del deadline  # the mixer closes collection itself at its deadlines
            await handler.deliver(sent, payload)
            await self.net.hop(dst, self.peer_id, 64)
            self.tx_bytes += len(payload)

        await self._call(endpoint, timeout_s, body())

    async def offer_plan(self, endpoint: str, offer: peer_pb2.PlanOffer, timeout_s: float) -> bool:
        sent = peer_pb2.PlanOffer.FromString(offer.SerializeToString())  # what crosses the wire

        async def body() -> bool:
            dst, _ = self.net.resolve(endpoint)
            sink = self.net.plan_sinks.get(endpoint)
            await self.net.gate(self.peer_id)
            await self.net.hop(self.peer_id, dst, len(offer.sealed) + 64)
            await self.net.gate(dst)
            if sink is None:
                raise SimRpcError(f"{endpoint}: UNIMPLEMENTED", grpc.StatusCode.UNIMPLEMENTED)
            accepted = await sink.offer_plan(sent)
            await self.net.hop(dst, self.peer_id, 16)
            return accepted

        return await self._call(endpoint, timeout_s, body())  # type: ignore[return-value]

    async def pull_shard(self, endpoint: str, request: peer_pb2.PullRequest, sink: object, timeout_s: float) -> None:
        async def body() -> None:
            dst, handler = self.net.resolve(endpoint)
            await self.net.gate(self.peer_id)
            await self.net.hop(self.peer_id, dst, 256)
            await self.net.gate(dst)
            header, payload = await handler.reduced_for(request)
            header.payload_bytes = len(payload)
            header.checksum = checksum(payload)
            await sink.admit(header)  # type: ignore[attr-defined]
            await self.net.hop(dst, self.peer_id, len(payload), payload=True)
            await self.net.gate(self.peer_id)
            await sink.deliver(header, payload)  # type: ignore[attr-defined]

        await self._call(endpoint, timeout_s, body())

    async def hand_state(self, endpoint: str, header: peer_pb2.HandStateHeader, payload: bytes,
                         timeout_s: float) -> tuple[bool, str]:
        sent = peer_pb2.HandStateHeader()
        sent.CopyFrom(header)
        sent.state.total_bytes = len(payload)

        async def body() -> tuple[bool, str]:
            dst, handler = self.net.resolve(endpoint)
            await self.net.gate(self.peer_id)
            await self.net.hop(self.peer_id, dst, 256)
            await self.net.gate(dst)
            t0 = self.net.loop.time()
            await handler.admit_state(sent)
            try:
                await self.net.hop(self.peer_id, dst, len(payload), first=False, payload=True)
                await self.net.gate(dst)
                await handler.take_state(sent, payload, self.net.loop.time() - t0)
            finally:
                handler.state_stream_done()
            await self.net.hop(dst, self.peer_id, 64)
            self.tx_bytes += len(payload)
            return True, "verified; installing"

        return await self._call(endpoint, timeout_s, body())  # type: ignore[return-value]

    async def dial_back(self, endpoint: str, my_endpoint: str, run_id: str, dht_port: int = 0) -> DialBackResult:
        async def body() -> DialBackResult:
            dst, _ = self.net.resolve(endpoint)
            await self.net.hop(self.peer_id, dst, 128)
            await self.net.gate(dst)
            ok = self.peer_id not in self.net.clients and self.net.reachable(dst, self.peer_id)
            await self.net.hop(dst, self.peer_id, 64)
            # The simulated DHT is one shared store: there is no DHT port to probe.
            return DialBackResult(ok, "sim: dialled back" if ok else "sim: dial-back failed (behind a NAT)")

        return await self._call(endpoint, 5.0, body())  # type: ignore[return-value]

    async def fetch_state(self, endpoint: str, request: peer_pb2.FetchStateRequest, max_bytes: int
                          ) -> tuple[peer_pb2.StateHeader, bytes]:
        async def body() -> tuple[peer_pb2.StateHeader, bytes]:
            dst, handler = self.net.resolve(endpoint)
            await self.net.hop(self.peer_id, dst, 256)
            await self.net.gate(dst)
            header, payload = await handler.state_for(request)
            if header.total_bytes > max_bytes:
                raise SimRpcError("oversized state")
            await self.net.hop(dst, self.peer_id, len(payload), payload=True)
            return header, payload

        return await self._call(endpoint, 30.0, body())  # type: ignore[return-value]


class SimDht:
    """One global DHT: key -> subkey -> (value, expiry on virtual time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: float = 0.0) -> None:
        """``epoch``: the Unix time of loop time 0 (records are read with their expiry in Unix time)."""
        self.loop, self.epoch = loop, epoch
        self.data: dict[str, dict[str, tuple[object, float]]] = {}

    def store(self, key: str, subkey: str, value: object, ttl_s: float) -> bool:
        """False, storing nothing, when the subkey holds a value that expires no earlier (hivemind's rule)."""
        now, exp = self.loop.time(), self.loop.time() + ttl_s
        held = self.data.setdefault(key, {}).get(subkey)
        if held is not None and held[1] > now and held[1] >= exp:
            return False
        self.data[key][subkey] = (value, exp)
        return True

    def get(self, key: str) -> dict[str, object]:
        now = self.loop.time()
        return {sk: v for sk, (v, exp) in self.data.get(key, {}).items() if exp > now}

    def expiries(self, key: str) -> dict[str, float]:
        """Unix time at which each live subkey of ``key`` expires."""
        now = self.loop.time()
        return {sk: self.epoch + exp for sk, (_, exp) in self.data.get(key, {}).items() if exp > now}


class SimMembership:
    """One peer's DHT port (see :class:`peerd.net.ports.MembershipPort`)."""

    def __init__(self, dht: SimDht, net: SimNetwork, peer_id: str, ttl_s: float, delay_s: float,
                 rng: random.Random, run_id: str = "run") -> None:
        self.dht, self.net, self.peer_id, self.ttl_s, self.delay_s, self.rng = dht, net, peer_id, ttl_s, delay_s, rng
        self.run_id = run_id
        self.invalid_records = 0
        self.ops = 0

    async def _op(self) -> None:
        self.ops += 1
        await self.net.gate(self.peer_id)
        await asyncio.sleep(self.delay_s * (0.5 + self.rng.random()))
        await self.net.gate(self.peer_id)

    async def heartbeat(self, record: PeerRecord, ttl_s: float | None = None) -> bool:
        await self._op()
        if self.peer_id in self.net.down:
            return False
        # Through the real schema (v1/v2/v3), as a DHT reader would see it.
        record = PeerRecord.from_value(record.peer_id, record.to_value())
        return self.dht.store("peers", record.peer_id, record, self.ttl_s if ttl_s is None else ttl_s)

    async def live_records(self) -> dict[str, PeerRecord] | None:
        await self._op()
        expiries = self.dht.expiries("peers")
        return {sk: replace(rec, expires=expiries[sk]) for sk, rec in self.dht.get("peers").items()}  # type: ignore

    async def publish_plan(self, plan: RoundPlan, ttl_s: float) -> bool:
        await self._op()
        if self.peer_id in self.net.down:
            return False
        self.dht.store(f"plan.{plan.round}", plan.publisher, plan, ttl_s)
        return True

    async def read_plans(self, r: int, num_fragments: int) -> list[RoundPlan]:
        await self._op()
        return list(self.dht.get(f"plan.{r}").values())  # type: ignore[arg-type]

    def plan_offer(self, plan: RoundPlan, ttl_s: float) -> peer_pb2.PlanOffer:
        # The sim has no identities: the "seal" is the plain record; the schema checks are the real ones.
        return peer_pb2.PlanOffer(round=plan.round, publisher=plan.publisher,
                                  sealed=msgpack.packb(plan.to_record(), use_bin_type=True))

    def open_plan_offer(self, offer: peer_pb2.PlanOffer, num_fragments: int) -> RoundPlan:
        plan = plan_from_record(msgpack.unpackb(offer.sealed, raw=False), self.run_id, num_fragments)
        if plan.publisher != offer.publisher or plan.round != offer.round:
            raise ValueError("offered plan is for another publisher or round")
        return plan

    async def reping(self, peer_ids: list[str], maddrs: list[str]) -> int:
        return 0

    async def connect(self, maddrs: list[str]) -> list[str]:
        return []

    def p2pd_alive(self) -> bool:
        return True
