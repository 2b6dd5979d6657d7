"""Wire helpers shared by the gRPC server and client: status errors, checksums, bounded stream reads.

The server side decodes request messages itself (``parse``/``Chunks``: nothing reaches
protobuf before admission), and every stream read here is bounded in bytes and in time, so a
peer that stalls, truncates or overruns a stream is refused with a status instead of holding
memory or a slot.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from peerd.proto.v1 import peer_pb2

if TYPE_CHECKING:
    from peerd.net.transport import Transport

# Largest data chunk any peer may send: a protocol constant, not the receiver's own
# transport.chunk_bytes (peers may configure different chunk sizes).
MAX_CHUNK_BYTES = 3 << 20
_M = TypeVar("_M", bound=Message)
_P = ParamSpec("_P")
_R = TypeVar("_R")


class Rejected(Exception):
    """A sink refuses a stream; becomes a gRPC error status with this code and detail."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        """Remember the status to send."""
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ChannelClosed(ConnectionError):
    """A call ended because its channel was closed under it (the view forgot the peer mid-call)."""


# Statuses after which the same call may work a moment later: the peer was busy, the connection
# broke, or the call ran out of its own time. A refusal that names the call itself (another plan,
# a duplicate, a bad header, no permission) fails the same way again, so it is not retried.
RETRIABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.UNKNOWN})


def call_status(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status a failed call ended with (``exc.status`` for a transport without gRPC), if any."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    status = getattr(exc, "status", None)
    return status if isinstance(status, grpc.StatusCode) else None


def may_retry(exc: BaseException) -> bool:
    """Whether a failed call is worth repeating (see ``RETRIABLE``); a closed channel is not: the peer left the view."""
    if isinstance(exc, ChannelClosed):
        return False
    status = call_status(exc)
    if status is None:
        return isinstance(exc, OSError)  # a broken connection without a status
    return status in RETRIABLE


def survives_channel_close(call: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Turn the ``CancelledError`` of a call whose channel closed into :class:`ChannelClosed`.

    ``grpc.aio`` cancels a channel's calls when it is closed, and they raise
    ``asyncio.CancelledError``, which callers rightly take for their own task being cancelled:
    a view refresh that missed a record (a loaded DHT) closed the channel of a dial-back in flight,
    the reachability loop ended "cancelled", and the daemon exited 1. Only a task that is itself
    being cancelled (``Task.cancelling()``) still sees ``CancelledError``.
    """

    @functools.wraps(call)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await call(*args, **kwargs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            raise ChannelClosed(f"{call.__name__}: the channel was closed during the call") from None

    return wrapper


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


async def read_exact(t: Transport, total: int, deadline: float, chunks: AsyncIterator[Any] | Any, what: str,
                     on_chunk: Any = None) -> bytes:
    """Read exactly ``total`` bytes of data chunks, each within the per-chunk timeout and ``deadline``.

    ``what`` names the body in refusals ("payload", "state"); ``on_chunk(data)`` sees each chunk
    as it lands. The stream must end right after the last byte.

    Raises:
        Rejected: truncated, longer than announced, a non-data or oversized chunk, or stalled past ``deadline``.
        TimeoutError: a chunk did not arrive within ``transport.chunk_timeout_s`` (stream cut).
    """
    buf = bytearray()
    while len(buf) < total:
        budget = min(t.cfg.chunk_timeout_s, deadline - time.time())
        if budget <= 0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, f"{what} stream missed its deadline")
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), budget)
        except StopAsyncIteration:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "stream truncated") from None
        if chunk.WhichOneof("part") != "data" or len(chunk.data) > MAX_CHUNK_BYTES:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "expected a data chunk of at most 3 MiB")
        buf += chunk.data
        if len(buf) > total:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{what} longer than announced")
        if on_chunk is not None:
            on_chunk(chunk.data)
        await t.down.take(len(chunk.data))
    # The stream must end here; anything else is a protocol violation.
    try:
        await asyncio.wait_for(chunks.__anext__(), t.cfg.chunk_timeout_s)
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{what} longer than announced")
    except StopAsyncIteration:
        pass
    return bytes(buf)


async def read_payload(t: Transport, header: peer_pb2.ShardHeader, deadline: float,
                       request_iterator: AsyncIterator[peer_pb2.ShardChunk] | Any) -> bytes:
    """Read a shard's ``header.payload_bytes`` (:func:`read_exact`) and check its checksum.

    Raises:
        Rejected: as :func:`read_exact`, or DATA_LOSS on a checksum mismatch.
        TimeoutError: a chunk did not arrive within ``transport.chunk_timeout_s`` (stream cut).
    """
    # Hash each chunk as it lands, overlapping the sender's next chunk, instead of one pass
    # over the whole payload at the end (blake2b of 64 MiB: 0.1-0.4 s here, half the transfer).
    digest = _hasher()
    payload = await read_exact(t, header.payload_bytes, deadline, request_iterator, "payload", digest.update)
    if digest.digest() != header.checksum:
        raise Rejected(grpc.StatusCode.DATA_LOSS, "payload checksum mismatch")
    return payload


def parse(cls: type[_M], raw: bytes) -> _M:
    """Decode one request message; anything undecodable is the caller's fault (INVALID_ARGUMENT).

    Raises:
        Rejected: INVALID_ARGUMENT, the bytes are not a ``cls``.
    """
    try:
        return cls.FromString(raw)
    except (DecodeError, ValueError, TypeError, RecursionError):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable {cls.DESCRIPTOR.name}") from None


class Chunks:
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
        return parse(self._cls, await self._it.__anext__())


async def read_state(t: Transport, total: int, deadline: float, chunks: Chunks) -> bytes:
    """Read exactly ``total`` bytes of a handed-over state (:func:`read_exact`; the state's hashes check it)."""
    return await read_exact(t, total, deadline, chunks, "state")
