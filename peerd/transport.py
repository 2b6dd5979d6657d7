"""Transport: the ``grpc.aio`` server and cached channels, with chunked, bounded streams.

Lives on the loop thread. Payloads travel as a header message followed by data chunks of at
most ``transport.chunk_bytes`` (no message over 4 MiB). The server reads every chunk with a
per-chunk timeout and the whole stream under the round's deadline; it asks its sink to admit the
header *before* it reads any payload, and hands the payload over only once it is complete and
its checksum matches, so a refused or broken stream never touches state. Refusals are gRPC error
statuses. Keepalive is set on both sides for WAN links (NAT boxes drop idle flows after minutes).

With a swarm secret every call carries a credential and the server's deny-by-default interceptor
(peerd/auth.py) refuses any call without a valid one; each peer may hold at most
``security.max_streams_per_peer`` incoming streams and ``security.max_inflight_bytes_per_peer``
announced bytes at a time (peerd/limits.py). TLS / mTLS use the ``security.tls_*`` files.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import grpc

from peerd import auth
from peerd.config import SecurityConfig, TransportConfig
from peerd.faults import NO_FAULTS, FaultInjector
from peerd.hostile import NOT_HOSTILE, Hostile
from peerd.limits import LimitExceeded, PeerLimits
from peerd.proto.v1 import peer_pb2, peer_pb2_grpc

MAX_MESSAGE_BYTES = 4 << 20
# Largest data chunk any peer may send: a protocol constant, not the receiver's own
# transport.chunk_bytes (peers may configure different chunk sizes).
MAX_CHUNK_BYTES = 3 << 20
PUSH_METHOD = "/peerd.v1.Peer/PushShard"
FETCH_METHOD = "/peerd.v1.Peer/FetchState"


class Rejected(Exception):
    """A sink refuses a stream; becomes a gRPC error status with this code and detail."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        """Remember the status to send."""
        super().__init__(detail)
        self.code = code
        self.detail = detail


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


class Handler(ShardSink, StateSource, Protocol):
    """What a server hands its calls to: one mixer takes pushes and serves state."""


def _hasher() -> hashlib._Hash:
    return hashlib.blake2b(digest_size=16)


def checksum(payload: bytes | memoryview) -> bytes:
    """Payload digest carried in headers."""
    digest = _hasher()
    digest.update(payload)
    return digest.digest()


def _chunks(payload: bytes, chunk_bytes: int) -> list[bytes]:
    view = memoryview(payload)
    return [bytes(view[i : i + chunk_bytes]) for i in range(0, len(payload), chunk_bytes)]


# Bulk-transfer tuning, both sides (bench/transport.py): HTTP/2 frames default to 16 KiB, so a
# 1 MiB chunk was 64 frames; advertising 4 MiB frames lets a chunk travel as one (+20-35% goodput
# on loopback in trials). Larger TCP reads cut wakeups per chunk. Both are negotiated per
# connection and harmless with peers that do not set them.
_BULK_OPTIONS = (
    ("grpc.http2.max_frame_size", MAX_MESSAGE_BYTES),
    ("grpc.experimental.tcp_min_read_chunk_size", 1 << 20),
    ("grpc.experimental.tcp_max_read_chunk_size", MAX_MESSAGE_BYTES),
)


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
    ]


def _host_of(peer: str) -> str:
    """Address part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) for per-address caps."""
    return peer.rsplit(":", 1)[0]


async def _read_payload(t: Transport, header: peer_pb2.ShardHeader, deadline: float,
                        request_iterator: AsyncIterator[peer_pb2.ShardChunk]) -> bytes:
    """Read exactly ``header.payload_bytes`` in bounded chunks, each within the per-chunk timeout.

    Raises:
        Rejected: truncated, oversized, stalled past the round deadline or checksum mismatch.
        TimeoutError: a chunk did not arrive within ``transport.chunk_timeout_s`` (stream cut).
    """
    buf = bytearray()
    # Hash each chunk as it lands, overlapping the sender's next chunk, instead of one pass
    # over the whole payload at the end (blake2b of 64 MiB: 0.1-0.4 s here, half the transfer).
    digest = _hasher()
    while len(buf) < header.payload_bytes:
        budget = min(t.cfg.chunk_timeout_s, deadline - time.time())
        if budget <= 0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "stream missed the round deadline")
        try:
            chunk = await asyncio.wait_for(request_iterator.__anext__(), budget)
        except StopAsyncIteration:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "stream truncated") from None
        if chunk.WhichOneof("part") != "data" or len(chunk.data) > MAX_CHUNK_BYTES:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "expected a data chunk of at most 3 MiB")
        buf += chunk.data
        if len(buf) > header.payload_bytes:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload longer than announced")
        digest.update(chunk.data)
    # The stream must end here; anything else is a protocol violation.
    try:
        await asyncio.wait_for(request_iterator.__anext__(), t.cfg.chunk_timeout_s)
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload longer than announced")
    except StopAsyncIteration:
        pass
    if digest.digest() != header.checksum:
        raise Rejected(grpc.StatusCode.DATA_LOSS, "payload checksum mismatch")
    return bytes(buf)


class _Servicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: Transport, handler: Handler) -> None:
        self.t = transport
        self.handler = handler

    async def PushShard(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[peer_pb2.ShardChunk], context: grpc.aio.ServicerContext
    ) -> peer_pb2.PushShardResponse:
        t, handler = self.t, self.handler
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), t.cfg.chunk_timeout_s)
            if first.WhichOneof("part") != "header":
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "first chunk must be a header")
            header = first.header
            who = auth.caller(context.invocation_metadata())
            if t.key is not None and who != header.sender:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "header sender differs from the credential")
            deadline = await handler.admit(header)
            # Without a secret the caller is unauthenticated: cap by its address instead.
            holder = (who or "") if t.key is not None else _host_of(context.peer())
            with t.limits.hold(holder, header.payload_bytes):
                payload = await _read_payload(t, header, deadline, request_iterator)
            await handler.deliver(header, payload)
        except LimitExceeded as exc:
            t.on_rejected("resource_exhausted")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Rejected as rej:
            t.on_rejected(rej.code.name.lower())
            await context.abort(rej.code, rej.detail)
        except TimeoutError:
            t.on_rejected("chunk_timeout")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "chunk timeout")
        except StopAsyncIteration:  # the client ended (or cancelled) the stream before a header
            t.on_rejected("empty_stream")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream")
        t.on_bytes("rx", len(payload))
        return peer_pb2.PushShardResponse(accepted_bytes=len(payload))

    async def FetchState(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.FetchStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.StateChunk]:
        try:
            header, payload = await self.handler.state_for(request)
        except Rejected as rej:
            self.t.on_rejected(rej.code.name.lower())
            await context.abort(rej.code, rej.detail)
        yield peer_pb2.StateChunk(header=header)
        for i, chunk in enumerate(_chunks(payload, self.t.cfg.chunk_bytes)):
            if i == 1:
                self.t.faults.hit("donor_mid_transfer")
            self.t.on_bytes("tx", len(chunk))
            yield peer_pb2.StateChunk(data=chunk)


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
        faults: FaultInjector = NO_FAULTS,
        hostile: Hostile = NOT_HOSTILE,
    ) -> None:
        """Counters go through ``on_bytes(direction, n)``, ``on_rejected(reason)``, ``on_transfer(kind, s)``.

        ``key`` (from :func:`peerd.auth.derive_key`) turns admission on: calls out carry a credential
        for ``peer_id`` and calls in without a valid one are refused and counted by ``on_refused``.
        """
        self.cfg = cfg
        self.security = security or SecurityConfig()
        self.key = key
        self.peer_id = peer_id
        self.on_refused = on_refused
        self.limits = PeerLimits(self.security.max_streams_per_peer, self.security.max_inflight_bytes_per_peer)
        self._channel_creds = auth.channel_credentials(self.security)
        self.faults = faults
        self.hostile = hostile
        self.on_bytes = on_bytes
        self.on_rejected = on_rejected
        self.on_transfer = on_transfer
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.port = 0

    def bind(self) -> int:
        """Create the server and bind its port (the endpoint is known before the handler exists).

        Raises:
            OSError: the address cannot be bound (port in use, bad host).
        """
        interceptors = []
        if self.key is not None:
            verifier = auth.Verifier(self.key, self.security.credential_window_s, self.security.replay_cache_size)
            interceptors.append(auth.AdmissionInterceptor(verifier, self.on_refused))
        self._server = grpc.aio.server(options=server_options(self.cfg), interceptors=interceptors,
                                       maximum_concurrent_rpcs=self.security.max_concurrent_rpcs)
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

    async def start(self, handler: Handler) -> int:
        """Serve, handing every call to ``handler``; binds first if :meth:`bind` was not called."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        peer_pb2_grpc.add_PeerServicer_to_server(_Servicer(self, handler), self._server)
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

    async def push_shard(self, endpoint: str, header: peer_pb2.ShardHeader, payload: bytes, timeout_s: float) -> None:
        """Stream one shard to a peer.

        Raises:
            grpc.aio.AioRpcError: refused, unreachable or past ``timeout_s``.
        """
        header.payload_bytes = len(payload)
        header.checksum = checksum(payload)
        chunks = _chunks(payload, self.cfg.chunk_bytes)
        if self.hostile.mode and header.kind == peer_pb2.PAYLOAD_KIND_CONTRIBUTION:  # tests only: see peerd/hostile.py
            chunks = self.hostile.corrupt(header, payload, self.cfg.chunk_bytes)

        async def messages() -> AsyncIterator[peer_pb2.ShardChunk]:
            yield peer_pb2.ShardChunk(header=header)
            for i, chunk in enumerate(chunks):
                if i == len(chunks) // 2 and i > 0:
                    self.faults.hit("mid_stream")
                yield peer_pb2.ShardChunk(data=chunk)

        t0 = time.monotonic()
        await self._stub(endpoint).PushShard(messages(), timeout=max(timeout_s, 0.001),
                                             metadata=self._credential(PUSH_METHOD))
        self.on_transfer("push", time.monotonic() - t0)
        self.on_bytes("tx", len(payload))

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
        if len(buf) != header.total_bytes:
            call.cancel()
            raise ValueError("donor sent more bytes than announced")
        call.cancel()
        self.on_transfer("state", time.monotonic() - t0)
        return header, bytes(buf)

    async def stop(self, grace_s: float) -> None:
        """Stop serving (in-flight calls get ``grace_s``) and close every channel."""
        await self.forget(list(self._channels))
        if self._server is not None:
            await self._server.stop(grace_s)
