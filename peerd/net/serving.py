"""The gRPC server side of the transport: handlers over raw request bytes, bounded streams.

Nothing reaches protobuf before admission (peerd/auth.py, which refuses without parsing) and a
stream slot (peerd/limits.py): the handlers are registered with no request deserializer and
decode each message themselves, so an undecodable body is refused with INVALID_ARGUMENT instead
of surfacing as grpc's UNKNOWN with an error line. Every refusal is counted and logged through
the transport's rate-limited :class:`peerd.core.log.RemoteLog`; a bug a call triggers is INTERNAL,
logged (rate-limited) with its stack.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from peerd.net import auth
from peerd.net.limits import LimitExceeded
from peerd.proto.v1 import peer_pb2

if TYPE_CHECKING:
    from peerd.net.transport import Handler, PlanSink, Transport

SERVICE = "peerd.v1.Peer"
# Largest data chunk any peer may send: a protocol constant, not the receiver's own
# transport.chunk_bytes (peers may configure different chunk sizes).
MAX_CHUNK_BYTES = 3 << 20
_M = TypeVar("_M", bound=Message)


class Rejected(Exception):
    """A sink refuses a stream; becomes a gRPC error status with this code and detail."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        """Remember the status to send."""
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _hasher() -> hashlib._Hash:
    return hashlib.blake2b(digest_size=16)


def checksum(payload: bytes | memoryview) -> bytes:
    """Payload digest carried in headers."""
    digest = _hasher()
    digest.update(payload)
    return digest.digest()


def address_of(peer: str) -> str:
    """Bare IP of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, url-escaped or not)."""
    text = peer.replace("%5B", "[").replace("%5D", "]")
    text = text.split(":", 1)[1] if text.startswith(("ipv4:", "ipv6:")) else text
    return endpoint_host(text)


def endpoint_host(endpoint: str) -> str:
    """Host part of ``host:port`` / ``[v6]:port``, without brackets."""
    host = endpoint.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def split_chunks(payload: bytes, chunk_bytes: int) -> list[bytes]:
    """``payload`` cut into data chunks of at most ``chunk_bytes``."""
    view = memoryview(payload)
    return [bytes(view[i : i + chunk_bytes]) for i in range(0, len(payload), chunk_bytes)]


async def read_payload(t: Transport, header: peer_pb2.ShardHeader, deadline: float,
                       request_iterator: AsyncIterator[peer_pb2.ShardChunk] | Any) -> bytes:
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
        await t.down.take(len(chunk.data))
    # The stream must end here; anything else is a protocol violation.
    try:
        await asyncio.wait_for(request_iterator.__anext__(), t.cfg.chunk_timeout_s)
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload longer than announced")
    except StopAsyncIteration:
        pass
    if digest.digest() != header.checksum:
        raise Rejected(grpc.StatusCode.DATA_LOSS, "payload checksum mismatch")
    return bytes(buf)


def _parse(cls: type[_M], raw: bytes) -> _M:
    """Decode one request message; anything undecodable is the caller's fault (INVALID_ARGUMENT).

    Raises:
        Rejected: INVALID_ARGUMENT, the bytes are not a ``cls``.
    """
    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, TypeError, RecursionError):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable {cls.DESCRIPTOR.name}") from None


class _Chunks:
    """A request stream of raw bytes, decoded one message at a time by the handler (not by grpc)."""

    def __init__(self, raw: AsyncIterator[bytes], cls: type[Message] = peer_pb2.ShardChunk) -> None:
        # grpc's iterator is opened on the first read only: an opened, never-awaited one is
        # reported as a RuntimeWarning on stderr for each stream refused before reading.
        self._raw = raw
        self._cls = cls
        self._it: AsyncIterator[bytes] | None = None

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._raw.__aiter__()
        return _parse(self._cls, await self._it.__anext__())


async def read_state(t: Transport, total: int, deadline: float, chunks: _Chunks) -> bytes:
    """Read exactly ``total`` bytes of a handed-over state in bounded chunks (the state's hashes check it).

    Raises:
        Rejected: truncated, longer than announced, or stalled past ``deadline``.
        TimeoutError: a chunk did not arrive within ``transport.chunk_timeout_s``.
    """
    buf = bytearray()
    while len(buf) < total:
        budget = min(t.cfg.chunk_timeout_s, deadline - time.time())
        if budget <= 0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "hand-over missed its deadline")
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), budget)
        except StopAsyncIteration:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "stream truncated") from None
        if chunk.WhichOneof("part") != "data" or len(chunk.data) > MAX_CHUNK_BYTES:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "expected a data chunk of at most 3 MiB")
        buf += chunk.data
        if len(buf) > total:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "state longer than announced")
        await t.down.take(len(chunk.data))
    try:
        await asyncio.wait_for(chunks.__anext__(), t.cfg.chunk_timeout_s)
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "state longer than announced")
    except StopAsyncIteration:
        pass
    return bytes(buf)


class Servicer:
    """Handlers over raw request bytes: nothing is parsed before admission and the stream slot."""

    def __init__(self, transport: Transport, handler: Handler, plans: PlanSink | None) -> None:
        """Handlers for ``transport``: pushes and fetches go to ``handler``, offers to ``plans`` (None: refused)."""
        self.handler = handler
        self.plans = plans
        self.t = transport

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str,
                      detail: str) -> None:
        self.t.on_rejected(reason)
        self.t.remote_log.event(f"stream_{reason}", self._holder(context)[0], "stream refused", level=logging.INFO,
                                detail=detail[:200])
        await context.abort(code, detail)

    async def _fail(self, context: grpc.aio.ServicerContext, what: str) -> None:
        # A bug of ours that a remote call triggered: refused as INTERNAL, logged (rate-limited) with its stack.
        self.t.on_rejected("internal")
        self.t.remote_log.event("handler_error", self._holder(context)[0], f"{what} handler failed",
                                level=logging.ERROR, exc_info=True)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _holder(self, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        address = auth.host_of(context.peer() or "")
        # Without a secret the caller is unauthenticated: cap by its address instead.
        who = auth.caller(context.invocation_metadata()) if self.t.key is not None else None
        return (who or "") if self.t.key is not None else address, address

    async def PushShard(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> peer_pb2.PushShardResponse:
        """Receive one shard: header, admission by the sink, then the payload in bounded chunks."""
        t = self.t
        holder, address = self._holder(context)
        chunks = _Chunks(request_iterator)
        try:
            # The slot is taken before the first byte is read: idle streams, and streams whose
            # header waits for its round's plan, count against their peer.
            with t.limits.stream(holder, address):
                first = await asyncio.wait_for(chunks.__anext__(), t.cfg.chunk_timeout_s)
                if first.WhichOneof("part") != "header":
                    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "first chunk must be a header")
                header = first.header
                if t.key is not None and holder != header.sender:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "header sender differs from the credential")
                deadline = await self.handler.admit(header)
                with t.limits.inflight(holder, header.payload_bytes):
                    payload = await read_payload(t, header, deadline, chunks)
                await self.handler.deliver(header, payload)
        except LimitExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        except TimeoutError:
            await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "chunk_timeout", "chunk timeout")
        except StopAsyncIteration:  # the client ended (or cancelled) the stream before a header
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_stream", "empty stream")
        except Exception:
            await self._fail(context, "PushShard")
        t.on_bytes("rx", len(payload))
        return peer_pb2.PushShardResponse(accepted_bytes=len(payload))

    async def HandState(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> peer_pb2.HandStateReply:
        """Take a state a client hands over: header, admission by the mixer, payload, verification."""
        t = self.t
        holder, address = self._holder(context)
        chunks = _Chunks(request_iterator, peer_pb2.HandStateChunk)
        payload, t0 = b"", time.monotonic()
        try:
            # No byte reservation (limits.inflight): the mixer admits one hand-over at a time, only
            # while it waits for one, and no larger than its own model's state.
            with t.limits.stream(holder, address):
                first = await asyncio.wait_for(chunks.__anext__(), t.cfg.chunk_timeout_s)
                if first.WhichOneof("part") != "header":
                    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "first chunk must be a header")
                header = first.header
                if t.key is not None and holder != header.donor:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "header donor differs from the credential")
                deadline = await self.handler.admit_state(header)
                try:
                    payload = await read_state(t, header.state.total_bytes, deadline, chunks)
                    await self.handler.take_state(header, payload, time.monotonic() - t0)
                finally:
                    self.handler.state_stream_done()
        except LimitExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        except TimeoutError:
            await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "chunk_timeout", "chunk timeout")
        except StopAsyncIteration:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_stream", "empty stream")
        except Exception:
            await self._fail(context, "HandState")
        t.on_bytes("rx", len(payload))
        return peer_pb2.HandStateReply(installed=True, detail="verified; installing")

    async def OfferPlan(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PlanOfferReply:
        """Take a round plan offered by its publisher (verified by the plan sink like a DHT read)."""
        holder, address = self._holder(context)
        accepted = False
        try:
            with self.t.limits.stream(holder, address):
                if self.plans is None:
                    raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "this peer takes no plan offers")
                offer = _parse(peer_pb2.PlanOffer, request)
                # With a secret the credential names the caller: only a plan's publisher offers it.
                if self.t.key is not None and holder != offer.publisher:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "offer publisher differs from the credential")
                accepted = await self.plans.offer_plan(offer)
        except LimitExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        except Exception:
            await self._fail(context, "OfferPlan")
        return peer_pb2.PlanOfferReply(accepted=accepted)

    async def FetchState(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.StateChunk]:
        """Serve this peer's outer state: a header, then data chunks."""
        t = self.t
        holder, address = self._holder(context)
        with ExitStack() as slot:
            try:
                slot.enter_context(t.limits.stream(holder, address))
                header, payload = await self.handler.state_for(_parse(peer_pb2.FetchStateRequest, request))
            except LimitExceeded as exc:
                await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
            except Rejected as rej:
                await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
            except Exception:
                await self._fail(context, "FetchState")
            yield peer_pb2.StateChunk(header=header)
            for i, chunk in enumerate(split_chunks(payload, t.up.chunk_bytes(t.cfg.chunk_bytes))):
                if i == 1:
                    t.faults.hit("donor_mid_transfer")
                await t.up.take(len(chunk))
                t.on_bytes("tx", len(chunk))
                yield peer_pb2.StateChunk(data=chunk)

    async def PullShard(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.ShardChunk]:
        """Stream this owner's reduced shard to a client-mode member, exactly like a push."""
        t = self.t
        holder, address = self._holder(context)
        with ExitStack() as slot:
            try:
                slot.enter_context(t.limits.stream(holder, address))
                req = _parse(peer_pb2.PullRequest, request)
                if t.key is not None and holder != req.requester:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "requester differs from the credential")
                header, payload = await self.handler.reduced_for(req)
            except LimitExceeded as exc:
                await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
            except Rejected as rej:
                await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
            except Exception:
                await self._fail(context, "PullShard")
            header.payload_bytes = len(payload)
            header.checksum = checksum(payload)
            yield peer_pb2.ShardChunk(header=header)
            for chunk in split_chunks(payload, t.up.chunk_bytes(t.cfg.chunk_bytes)):
                await t.up.take(len(chunk))
                yield peer_pb2.ShardChunk(data=chunk)
            t.on_bytes("tx", len(payload))

    async def DialBack(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> peer_pb2.DialBackReply:
        """Dial the caller back (only the address its call came from) and say whether that worked."""
        t = self.t
        holder, address = self._holder(context)
        try:
            with t.limits.stream(holder, address):
                req = _parse(peer_pb2.DialBackRequest, request)
                return await t.serve_dial_back(req, holder, address_of(context.peer() or ""))
        except LimitExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        except Exception:
            await self._fail(context, "DialBack")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def Ping(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingReply:
        """Answer a dial-back probe with its nonce and this peer's id."""
        try:
            req = _parse(peer_pb2.PingRequest, request)
            if len(req.nonce) > 32:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "nonce longer than 32 bytes")
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        return peer_pb2.PingReply(nonce=req.nonce, peer_id=self.t.peer_id)


def add_servicer(servicer: Servicer, server: grpc.aio.Server) -> None:
    """Register the handlers with raw-bytes request deserializers (same wire format as the stubs)."""
    handlers = {
        "OfferPlan": grpc.unary_unary_rpc_method_handler(
            servicer.OfferPlan, request_deserializer=None,
            response_serializer=peer_pb2.PlanOfferReply.SerializeToString),
        "PushShard": grpc.stream_unary_rpc_method_handler(
            servicer.PushShard, request_deserializer=None,
            response_serializer=peer_pb2.PushShardResponse.SerializeToString),
        "FetchState": grpc.unary_stream_rpc_method_handler(
            servicer.FetchState, request_deserializer=None,
            response_serializer=peer_pb2.StateChunk.SerializeToString),
        "PullShard": grpc.unary_stream_rpc_method_handler(
            servicer.PullShard, request_deserializer=None,
            response_serializer=peer_pb2.ShardChunk.SerializeToString),
        "DialBack": grpc.unary_unary_rpc_method_handler(
            servicer.DialBack, request_deserializer=None,
            response_serializer=peer_pb2.DialBackReply.SerializeToString),
        "Ping": grpc.unary_unary_rpc_method_handler(
            servicer.Ping, request_deserializer=None,
            response_serializer=peer_pb2.PingReply.SerializeToString),
        "HandState": grpc.stream_unary_rpc_method_handler(
            servicer.HandState, request_deserializer=None,
            response_serializer=peer_pb2.HandStateReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
