"""The gRPC server side of the transport: handlers over raw request bytes, bounded streams.

Nothing reaches protobuf before admission (peerd/auth.py, which refuses without parsing) and a
stream slot (peerd/limits.py): the handlers are registered with no request deserializer and
decode each message themselves (:mod:`peerd.net.wire`), so an undecodable body is refused with
INVALID_ARGUMENT instead of surfacing as grpc's UNKNOWN with an error line. Every refusal is
counted and logged through the transport's rate-limited :class:`peerd.core.log.RemoteLog`; a bug
a call triggers is INTERNAL, logged (rate-limited) with its stack. One place maps exceptions to
statuses (:meth:`Servicer._refusals`), so every handler refuses the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc

from peerd.net import auth
from peerd.net.limits import LimitExceeded
from peerd.net.wire import (
    Chunks,
    Rejected,
    address_of,
    checksum,
    parse,
    read_payload,
    read_state,
    split_chunks,
)
from peerd.proto.v1 import peer_pb2

if TYPE_CHECKING:
    from peerd.net.transport import Handler, PlanSink, Transport

SERVICE = "peerd.v1.Peer"


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

    @asynccontextmanager
    async def _refusals(self, context: grpc.aio.ServicerContext, what: str) -> AsyncIterator[None]:
        """Turn what a handler raises into its refusal: counted, logged (rate-limited), aborted.

        ``context.abort`` raises, so nothing after a refused body runs. A stream cut or stalled
        mid-read is DEADLINE_EXCEEDED; a stream ended before its header is INVALID_ARGUMENT;
        anything unexpected is our bug, INTERNAL with its stack logged.
        """
        try:
            yield
        except LimitExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", str(exc))
        except Rejected as rej:
            await self._refuse(context, rej.code, rej.code.name.lower(), rej.detail)
        except TimeoutError:
            await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "chunk_timeout", "chunk timeout")
        except StopAsyncIteration:  # the client ended (or cancelled) the stream before a header
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "empty_stream", "empty stream")
        except Exception:
            await self._fail(context, what)

    async def _header(self, chunks: Chunks, holder: str, claimant: str) -> Any:
        """A stream's first message, which must be its header naming the caller.

        With a secret, the header's ``claimant`` field (who sends) must be the credential's peer.

        Raises:
            Rejected: INVALID_ARGUMENT (no header first) or PERMISSION_DENIED (another peer's name).
            TimeoutError / StopAsyncIteration: no first message within the chunk timeout / at all.
        """
        first = await asyncio.wait_for(chunks.__anext__(), self.t.cfg.chunk_timeout_s)
        if first.WhichOneof("part") != "header":
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "first chunk must be a header")
        if self.t.key is not None and holder != getattr(first.header, claimant):
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, f"header {claimant} differs from the credential")
        return first.header

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
        chunks = Chunks(request_iterator)
        async with self._refusals(context, "PushShard"):
            # The slot is taken before the first byte is read: idle streams, and streams whose
            # header waits for its round's plan, count against their peer.
            with t.limits.stream(holder, address):
                header = await self._header(chunks, holder, "sender")
                deadline = await self.handler.admit(header)
                with t.limits.inflight(holder, header.payload_bytes):
                    payload = await read_payload(t, header, deadline, chunks)
                await self.handler.deliver(header, payload)
        t.on_bytes("rx", len(payload))
        return peer_pb2.PushShardResponse(accepted_bytes=len(payload))

    async def HandState(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> peer_pb2.HandStateReply:
        """Take a state a client hands over: header, admission by the mixer, payload, verification."""
        t = self.t
        holder, address = self._holder(context)
        chunks = Chunks(request_iterator, peer_pb2.HandStateChunk)
        payload, t0 = b"", time.monotonic()
        async with self._refusals(context, "HandState"):
            # No byte reservation (limits.inflight): the mixer admits one hand-over at a time, only
            # while it waits for one, and no larger than its own model's state.
            with t.limits.stream(holder, address):
                header = await self._header(chunks, holder, "donor")
                deadline = await self.handler.admit_state(header)
                try:
                    payload = await read_state(t, header.state.total_bytes, deadline, chunks)
                    await self.handler.take_state(header, payload, time.monotonic() - t0)
                finally:
                    self.handler.state_stream_done()
        t.on_bytes("rx", len(payload))
        return peer_pb2.HandStateReply(installed=True, detail="verified; installing")

    async def OfferPlan(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PlanOfferReply:
        """Take a round plan offered by its publisher (verified by the plan sink like a DHT read)."""
        holder, address = self._holder(context)
        accepted = False
        async with self._refusals(context, "OfferPlan"):
            with self.t.limits.stream(holder, address):
                if self.plans is None:
                    raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "this peer takes no plan offers")
                offer = parse(peer_pb2.PlanOffer, request)
                # With a secret the credential names the caller: only a plan's publisher offers it.
                if self.t.key is not None and holder != offer.publisher:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "offer publisher differs from the credential")
                accepted = await self.plans.offer_plan(offer)
        return peer_pb2.PlanOfferReply(accepted=accepted)

    async def FetchState(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.StateChunk]:
        """Serve this peer's outer state: a header, then data chunks."""
        t = self.t
        holder, address = self._holder(context)
        with ExitStack() as slot:  # the slot is held until the last chunk is out
            async with self._refusals(context, "FetchState"):
                slot.enter_context(t.limits.stream(holder, address))
                header, payload = await self.handler.state_for(parse(peer_pb2.FetchStateRequest, request))
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
        with ExitStack() as slot:  # the slot is held until the last chunk is out
            async with self._refusals(context, "PullShard"):
                slot.enter_context(t.limits.stream(holder, address))
                req = parse(peer_pb2.PullRequest, request)
                if t.key is not None and holder != req.requester:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "requester differs from the credential")
                header, payload = await self.handler.reduced_for(req)
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
        async with self._refusals(context, "DialBack"):
            with t.limits.stream(holder, address):
                req = parse(peer_pb2.DialBackRequest, request)
                return await t.serve_dial_back(req, holder, address_of(context.peer() or ""))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def Ping(  # noqa: N802 - gRPC method name
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PingReply:
        """Answer a dial-back probe with its nonce and this peer's id."""
        async with self._refusals(context, "Ping"):
            req = parse(peer_pb2.PingRequest, request)
            if len(req.nonce) > 32:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "nonce longer than 32 bytes")
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
