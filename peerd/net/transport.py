"""Transport: the ``grpc.aio`` server and cached channels, with chunked, bounded streams.

Lives on the loop thread. Payloads travel as a header message followed by data chunks of at
most ``transport.chunk_bytes`` (no message over 4 MiB). The server reads every chunk with a
per-chunk timeout and the whole stream under the round's deadline; it asks its sink to admit the
header *before* it reads any payload, and hands the payload over only once it is complete and
its checksum matches, so a refused or broken stream never touches state. Refusals are gRPC error
statuses. Keepalive is set on both sides for WAN links (NAT boxes drop idle flows after minutes).

With a swarm secret every call carries a credential and the server's deny-by-default interceptor
(peerd/net/auth.py) refuses any call without a valid one, before a byte of its body is parsed. The
handlers take raw bytes and decode them themselves, so an undecodable body is INVALID_ARGUMENT,
never grpc's UNKNOWN. A stream holds a slot from its first byte: each peer may hold at most
``security.max_streams_per_peer`` incoming streams (each address ``max_streams_per_address``,
the server ``max_concurrent_rpcs``) and ``security.max_inflight_bytes_per_peer`` announced
bytes at a time (peerd/net/limits.py). Refusals are counted and logged rate-limited (peerd/core/log.py).
TLS / mTLS use the ``security.tls_*`` files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from peerd.core.config import SecurityConfig, TransportConfig
from peerd.core.faults import NO_FAULTS, FaultInjector
from peerd.core.log import RemoteLog, get_logger
from peerd.net import auth
from peerd.net.hostile import NOT_HOSTILE, Hostile
from peerd.net.limits import PeerLimits
from peerd.net.pacing import Pacer
from peerd.net.serving import SERVICE, Servicer, add_servicer
from peerd.net.wire import (
    MAX_CHUNK_BYTES,
    Rejected,
    checksum,
    endpoint_host,
    read_payload,
    split_chunks,
    survives_channel_close,
)
from peerd.proto.v1 import peer_pb2, peer_pb2_grpc

__all__ = ["FETCH_METHOD", "MAX_CHUNK_BYTES", "MAX_MESSAGE_BYTES", "PUSH_METHOD", "Rejected", "ShardSink",
           "StateSource", "Handler", "PlanSink", "PLAN_METHOD", "Transport", "checksum"]

MAX_MESSAGE_BYTES = 4 << 20
PUSH_METHOD = f"/{SERVICE}/PushShard"
FETCH_METHOD = f"/{SERVICE}/FetchState"
PLAN_METHOD = f"/{SERVICE}/OfferPlan"
PULL_METHOD = f"/{SERVICE}/PullShard"
DIAL_BACK_METHOD = f"/{SERVICE}/DialBack"
PING_METHOD = f"/{SERVICE}/Ping"
HAND_METHOD = f"/{SERVICE}/HandState"
# A dial-back probe is one tiny call: answered within this or the caller counts as not dialable.
PING_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DialBackResult:
    """A helper's answer to a dial-back: the gRPC endpoint, and the DHT port when it was asked to check it."""

    reachable: bool
    detail: str
    dht_reachable: bool | None = None  # None: not checked
    dht_detail: str = ""


async def probe_tcp(host: str, port: int, timeout_s: float = PING_TIMEOUT_S) -> tuple[bool, str]:
    """Whether a TCP connection to ``host:port`` is accepted (closed again at once; nothing is sent)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        return False, f"DHT port {host}:{port} refused or silent ({type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"DHT port {host}:{port} accepted a connection"


PULLABLE_KINDS = (peer_pb2.PAYLOAD_KIND_REDUCED, peer_pb2.PAYLOAD_KIND_GOSSIP)  # what a pull may carry


class ShardSink(Protocol):
    """Receives shard pushes (implemented by the mixing layer)."""

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Validate a header; return the absolute deadline for the payload or raise Rejected."""

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Take a complete, checksum-verified payload or raise Rejected (state untouched)."""


class StateSource(Protocol):
    """Serves outer state to joiners and resyncing peers (implemented by the mixer)."""

    async def state_for(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Snapshot the fragments the requester lacks; raise Rejected to refuse."""


class PlanSink(Protocol):
    """Takes round plans offered by their publishers (the round driver's inbox)."""

    async def offer_plan(self, offer: peer_pb2.PlanOffer) -> bool:
        """Verify and keep an offered plan; False (counted by the sink) when it is refused."""


class ShardSource(Protocol):
    """Serves reduced shards to client-mode members that pull them (implemented by the mixer)."""

    async def reduced_for(self, request: peer_pb2.PullRequest) -> tuple[peer_pb2.ShardHeader, bytes]:
        """Wait (bounded by the round) for this owner's reduced shard; raise Rejected to refuse."""


class StateTaker(Protocol):
    """Takes a state handed over by a client-mode member (implemented by the mixer; see peerd/mixing/handover.py)."""

    async def admit_state(self, header: peer_pb2.HandStateHeader) -> float:
        """Validate a hand-over's header; return the absolute deadline for the payload or raise Rejected."""

    async def take_state(self, header: peer_pb2.HandStateHeader, payload: bytes, seconds: float) -> None:
        """Verify and take a complete hand-over or raise Rejected (state untouched)."""

    def state_stream_done(self) -> None:
        """A hand-over stream ended, taken or not."""


class Handler(ShardSink, StateSource, ShardSource, StateTaker, Protocol):
    """What a server hands its calls to: one mixer takes pushes, serves state and reduced shards."""



# Bulk-transfer tuning (bench/transport.py): HTTP/2 frames default to 16 KiB, so a 1 MiB chunk
# was 64 frames; advertising 4 MiB frames lets a chunk travel as one (+20-35% goodput on loopback
# in trials). Larger TCP reads cut wakeups per chunk on the client, which opens few connections.
# The server keeps grpc's default reads: with 1 MiB minimum reads, every connection an outsider
# opens pins a large buffer, and rounds of 500 connections grew the server's RSS without a plateau
# (+133 MB over 10 rounds, still +16 MB over the last 3) where default reads level off
# (+24 MB, +1 MB): bench/hostile_soak.py --server-options bulk|plain.
_BULK_OPTIONS = (("grpc.http2.max_frame_size", MAX_MESSAGE_BYTES),)
CLIENT_READ_OPTIONS = (
    ("grpc.experimental.tcp_min_read_chunk_size", 1 << 20),
    ("grpc.experimental.tcp_max_read_chunk_size", MAX_MESSAGE_BYTES),
)
SERVER_READ_OPTIONS: tuple[tuple[str, int], ...] = ()


def channel_options(cfg: TransportConfig) -> list[tuple[str, int]]:
    """Client options: keepalive pings for WAN, 4 MiB message caps."""
    return [
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *_BULK_OPTIONS,
        *CLIENT_READ_OPTIONS,
    ]


def server_options(cfg: TransportConfig) -> list[tuple[str, int]]:
    """Server options matching channel_options (accept the clients' ping rate)."""
    return [
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.keepalive_time_s * 500)),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        *_BULK_OPTIONS,
        *SERVER_READ_OPTIONS,
    ]


class Transport:
    """gRPC server plus one cached channel per peer endpoint."""

    def __init__(
        self,
        cfg: TransportConfig,
        on_bytes: Callable[[str, int], None],
        on_rejected: Callable[[str], None],
        on_transfer: Callable[[str, float], None] = lambda kind, seconds: None,
        security: SecurityConfig | None = None,
        key: bytes | None = None,
        peer_id: str = "",
        on_refused: Callable[[str], None] = lambda reason: None,
        on_remote_event: Callable[[str, bool], None] = lambda reason, logged: None,
        faults: FaultInjector = NO_FAULTS,
        hostile: Hostile = NOT_HOSTILE,
    ) -> None:
        """Counters go through ``on_bytes(direction, n)``, ``on_rejected(reason)``, ``on_transfer(kind, s)``.

        ``key`` (from :func:`peerd.net.auth.derive_key`) turns admission on: calls out carry a credential
        for ``peer_id`` and calls in without a valid one are refused and counted by ``on_refused``.
        Refusals are logged rate-limited (peerd.core.log.RemoteLog); ``on_remote_event(reason, logged)``
        counts each one.
        """
        self.cfg = cfg
        self.security = security or SecurityConfig()
        self.key = key
        self.peer_id = peer_id
        self.on_refused = on_refused
        self.limits = PeerLimits(self.security.max_streams_per_peer, self.security.max_inflight_bytes_per_peer,
                                 max_total=self.security.max_concurrent_rpcs,
                                 max_per_address=self.security.max_streams_per_address)
        self.remote_log = RemoteLog(get_logger("peerd.transport"), on_remote_event)
        self._channel_creds = auth.channel_credentials(self.security)
        self.faults = faults
        self.hostile = hostile
        self.on_bytes = on_bytes
        self.on_rejected = on_rejected
        self.on_transfer = on_transfer
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.port = 0
        self.up, self.down = Pacer(cfg.max_upload_mbit), Pacer(cfg.max_download_mbit)
        self._dial_backs: dict[str, float] = {}  # caller address/id -> monotonic time of its last dial-back
        self._dialling = asyncio.Semaphore(4)  # dial-backs in flight at once

    def bind(self) -> int:
        """Create the server and bind its port (the endpoint is known before the handler exists).

        Raises:
            OSError: the address cannot be bound (port in use, bad host).
        """
        interceptors = []
        if self.key is not None:
            verifier = auth.Verifier(self.key, self.security.credential_window_s, self.security.replay_cache_size)
            interceptors.append(auth.AdmissionInterceptor(verifier, self.on_refused, self.remote_log))
        # Fair shares of max_concurrent_rpcs are enforced per peer and address by self.limits; grpc's
        # own cap, which refuses whoever comes next, is only a backstop well above it (refused
        # calls hold a grpc slot for microseconds).
        self._server = grpc.aio.server(options=server_options(self.cfg), interceptors=interceptors,
                                       maximum_concurrent_rpcs=4 * self.security.max_concurrent_rpcs)
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        server_creds = auth.server_credentials(self.security)
        try:
            if server_creds is not None:
                self.port = self._server.add_secure_port(f"{host}:{self.cfg.port}", server_creds)
            else:
                self.port = self._server.add_insecure_port(f"{host}:{self.cfg.port}")
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC on {host}:{self.cfg.port}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {host}:{self.cfg.port} (in use?)")
        return self.port

    async def start(self, handler: Handler, plans: PlanSink | None = None) -> int:
        """Serve, handing pushes and fetches to ``handler`` and plan offers to ``plans``.

        Binds first if :meth:`bind` was not called. Without ``plans`` offers are refused (UNIMPLEMENTED).
        """
        if self._server is None:
            self.bind()
        assert self._server is not None
        add_servicer(Servicer(self, handler, plans), self._server)
        await self._server.start()
        return self.port

    def _stub(self, endpoint: str) -> peer_pb2_grpc.PeerStub:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._channel_creds is not None:
                opts: list[tuple[str, int | str]] = list(channel_options(self.cfg))
                if self.security.tls_server_name:
                    opts.append(("grpc.ssl_target_name_override", self.security.tls_server_name))
                channel = grpc.aio.secure_channel(endpoint, self._channel_creds, options=opts)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=channel_options(self.cfg))
            self._channels[endpoint] = channel
        return peer_pb2_grpc.PeerStub(channel)

    def _credential(self, method: str) -> tuple[tuple[str, str], ...] | None:
        return None if self.key is None else auth.credential(self.key, self.peer_id, method)

    async def forget(self, endpoints: Sequence[str]) -> None:
        """Close channels to peers that left."""
        for ep in endpoints:
            channel = self._channels.pop(ep, None)
            if channel is not None:
                await channel.close(grace=None)

    @survives_channel_close
    async def push_shard(self, endpoint: str, header: peer_pb2.ShardHeader, payload: bytes, timeout_s: float) -> None:
        """Stream one shard to a peer.

        Raises:
            grpc.aio.AioRpcError: refused, unreachable or past ``timeout_s``.
        """
        header.payload_bytes = len(payload)
        header.checksum = checksum(payload)
        chunks = split_chunks(payload, self.up.chunk_bytes(self.cfg.chunk_bytes))
        if self.hostile.mode and header.kind == peer_pb2.PAYLOAD_KIND_CONTRIBUTION:  # tests only (hostile.py)
            chunks = self.hostile.corrupt(header, payload, self.cfg.chunk_bytes)

        async def messages() -> AsyncIterator[peer_pb2.ShardChunk]:
            yield peer_pb2.ShardChunk(header=header)
            for i, chunk in enumerate(chunks):
                if i == len(chunks) // 2 and i > 0:
                    self.faults.hit("mid_stream")
                await self.up.take(len(chunk))
                yield peer_pb2.ShardChunk(data=chunk)

        t0 = time.monotonic()
        await self._stub(endpoint).PushShard(messages(), timeout=max(timeout_s, 0.001),
                                             metadata=self._credential(PUSH_METHOD))
        self.on_transfer("push", time.monotonic() - t0)
        self.on_bytes("tx", len(payload))

    @survives_channel_close
    async def offer_plan(self, endpoint: str, offer: peer_pb2.PlanOffer, timeout_s: float) -> bool:
        """Hand a plan to one member; True when it verified there.

        Raises:
            grpc.aio.AioRpcError: refused, unreachable or past ``timeout_s``.
        """
        reply = await self._stub(endpoint).OfferPlan(offer, timeout=max(timeout_s, 0.001),
                                                     metadata=self._credential(PLAN_METHOD))
        self.on_bytes("tx", offer.ByteSize())
        return bool(reply.accepted)

    @survives_channel_close
    async def fetch_state(
        self, endpoint: str, request: peer_pb2.FetchStateRequest, max_bytes: int
    ) -> tuple[peer_pb2.StateHeader, bytes]:
        """Download a donor's state stream; every chunk is bounded by ``chunk_timeout_s``.

        Raises:
            grpc.aio.AioRpcError, asyncio.TimeoutError, ValueError: transfer failed or malformed.
        """
        t0 = time.monotonic()
        call = self._stub(endpoint).FetchState(request, timeout=self.cfg.state_timeout_s,
                                               metadata=self._credential(FETCH_METHOD))
        it = call.__aiter__()
        first = await asyncio.wait_for(it.__anext__(), self.cfg.chunk_timeout_s)
        if first.WhichOneof("part") != "header" or first.header.total_bytes > max_bytes:
            call.cancel()
            raise ValueError("donor sent no header or an oversized state")
        header = first.header
        buf = bytearray()
        while len(buf) < header.total_bytes:
            chunk = await asyncio.wait_for(it.__anext__(), self.cfg.chunk_timeout_s)
            if chunk.WhichOneof("part") != "data":
                call.cancel()
                raise ValueError("donor sent a second header")
            buf += chunk.data
            self.on_bytes("rx", len(chunk.data))
            await self.down.take(len(chunk.data))
        if len(buf) != header.total_bytes:
            call.cancel()
            raise ValueError("donor sent more bytes than announced")
        call.cancel()
        self.on_transfer("state", time.monotonic() - t0)
        return header, bytes(buf)

    @survives_channel_close
    async def pull_shard(self, endpoint: str, request: peer_pb2.PullRequest, sink: ShardSink, timeout_s: float) -> None:
        """Pull an owner's reduced shard (client mode) and hand it to ``sink`` like a push.

        The header is admitted by ``sink`` before a payload byte is read, the payload is read in
        bounded chunks and checksummed, and only then delivered: the same checks as a push.

        Raises:
            grpc.aio.AioRpcError, Rejected, TimeoutError: refused, unreachable, malformed or late.
        """
        t0 = time.monotonic()
        call = self._stub(endpoint).PullShard(request, timeout=max(timeout_s, 0.001),
                                              metadata=self._credential(PULL_METHOD))
        try:
            it = call.__aiter__()
            first = await asyncio.wait_for(it.__anext__(), max(timeout_s, 0.001))
            # A reduced shard (DiLoCo) or a gossip partner's message; the sink admits only its own kind.
            if first.WhichOneof("part") != "header" or first.header.kind not in PULLABLE_KINDS:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "owner sent no reduced-shard or gossip header")
            deadline = await sink.admit(first.header)  # checks the size against the codec and shape
            payload = await read_payload(self, first.header, deadline, it)
            await sink.deliver(first.header, payload)
        finally:
            call.cancel()
        self.on_transfer("pull", time.monotonic() - t0)
        self.on_bytes("rx", len(payload))

    @survives_channel_close
    async def hand_state(self, endpoint: str, header: peer_pb2.HandStateHeader, payload: bytes,
                         timeout_s: float) -> tuple[bool, str]:
        """Stream this peer's state to a reachable joiner that cannot fetch it (client mode); (installed, detail).

        Raises:
            grpc.aio.AioRpcError: refused, unreachable or past ``timeout_s``.
        """
        header.state.total_bytes = len(payload)
        chunks = split_chunks(payload, self.up.chunk_bytes(self.cfg.chunk_bytes))

        async def messages() -> AsyncIterator[peer_pb2.HandStateChunk]:
            yield peer_pb2.HandStateChunk(header=header)
            for chunk in chunks:
                await self.up.take(len(chunk))
                yield peer_pb2.HandStateChunk(data=chunk)

        t0 = time.monotonic()
        reply = await self._stub(endpoint).HandState(messages(), timeout=max(timeout_s, 0.001),
                                                     metadata=self._credential(HAND_METHOD))
        self.on_transfer("handover", time.monotonic() - t0)
        self.on_bytes("tx", len(payload))
        return reply.installed, reply.detail

    @survives_channel_close
    async def dial_back(self, endpoint: str, my_endpoint: str, run_id: str, dht_port: int = 0) -> DialBackResult:
        """Ask the peer at ``endpoint`` to dial ``my_endpoint`` back (and this host's ``dht_port``, when set).

        Raises:
            grpc.aio.AioRpcError: the helper refused or could not be reached.
        """
        request = peer_pb2.DialBackRequest(run_id=run_id, requester=self.peer_id, endpoint=my_endpoint,
                                           nonce=os.urandom(16), dht_port=dht_port)
        reply = await self._stub(endpoint).DialBack(request, timeout=2 * PING_TIMEOUT_S + self.cfg.rpc_timeout_s,
                                                    metadata=self._credential(DIAL_BACK_METHOD))
        return DialBackResult(reply.reachable, reply.detail, reply.dht_reachable if reply.dht_checked else None,
                              reply.dht_detail)

    async def serve_dial_back(self, req: peer_pb2.DialBackRequest, holder: str, seen: str) -> peer_pb2.DialBackReply:
        """Dial a caller back: only the address its call came from, at most once per few seconds.

        Dialling exactly the caller's own address (never a third party's) keeps this from being a
        way to make peers connect elsewhere. A caller that announces another host than the one it
        calls from (a private address behind a NAT) is told so without a dial: nobody else can
        reach that host either.

        Raises:
            Rejected: wrong run, a requester that is not the credential's, or too frequent.
        """
        if self.key is not None and holder != req.requester:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "requester differs from the credential")
        if not req.endpoint or len(req.endpoint) > 300 or len(req.nonce) > 32 or not req.requester:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "malformed dial-back request")
        now, key = time.monotonic(), f"{seen}/{req.requester[:80]}"
        if now - self._dial_backs.get(key, -1e9) < 2.0:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "dial-back asked too often")
        if len(self._dial_backs) > 4096:
            self._dial_backs.clear()
        self._dial_backs[key] = now
        if req.dht_port > 65535:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "dht_port out of range")
        host = endpoint_host(req.endpoint)
        async with self._dialling:
            # The DHT probe goes to the address the call came from (the caller's own), never elsewhere.
            dht = await probe_tcp(seen, req.dht_port) if req.dht_port else None
            if host != seen:
                reply = peer_pb2.DialBackReply(reachable=False, detail=f"announces {host} but calls from {seen} (NAT?)")
            else:
                ok, detail = await self._ping(req.endpoint, req.nonce, req.requester)
                reply = peer_pb2.DialBackReply(reachable=ok, detail=detail)
        if dht is not None:
            reply.dht_checked, reply.dht_reachable, reply.dht_detail = True, dht[0], dht[1]
        return reply

    async def _ping(self, endpoint: str, nonce: bytes, expect: str) -> tuple[bool, str]:
        """One probe on a fresh channel (a cached one could ride an old connection the caller opened)."""
        if self._channel_creds is not None:
            opts: list[tuple[str, int | str]] = list(channel_options(self.cfg))
            if self.security.tls_server_name:
                opts.append(("grpc.ssl_target_name_override", self.security.tls_server_name))
            channel = grpc.aio.secure_channel(endpoint, self._channel_creds, options=opts)
        else:
            channel = grpc.aio.insecure_channel(endpoint, options=channel_options(self.cfg))
        try:
            reply = await peer_pb2_grpc.PeerStub(channel).Ping(
                peer_pb2.PingRequest(nonce=nonce), timeout=PING_TIMEOUT_S, metadata=self._credential(PING_METHOD))
        except grpc.aio.AioRpcError as exc:
            return False, f"dial-back to {endpoint} failed: {exc.code().name}"
        finally:
            await channel.close(grace=None)
        if reply.nonce != nonce or reply.peer_id != expect:
            return False, f"{endpoint} answered as someone else"
        return True, f"dialled back {endpoint}"

    async def stop(self, grace_s: float) -> None:
        """Stop serving (in-flight calls get ``grace_s``) and close every channel."""
        await self.forget(list(self._channels))
        if self._server is not None:
            await self._server.stop(grace_s)
