"""Garbage-body gRPC calls, with or without a credential (the hostile suite's and the soak's attacker).

Bodies are raw bytes sent to the real methods, so any byte string reaches the server as a
request. The status codes come back counted; details of any UNKNOWN or INTERNAL (never expected)
are kept in :data:`ODD` for failure messages.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc

from peerd.net import auth
from peerd.net.transport import FETCH_METHOD, PUSH_METHOD

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
ODD: list[str] = []  # details of every UNKNOWN / INTERNAL seen
SEND_FAILED = "client_send_failed"  # the caller's grpc core could not send: the server had closed the call


def garbage(rng: random.Random) -> bytes:
    """Bodies protobuf cannot decode (bad tags, truncated lengths, invalid wire types), and a few it can."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 64))
    if kind == 1:
        return b"\x0a" + bytes([rng.randint(100, 127)]) + rng.randbytes(3)  # length past the end
    if kind == 2:
        return bytes([0x0F | (rng.randint(1, 15) << 3)]) + rng.randbytes(4)  # wire type 7: invalid
    return b"\xff" * rng.randint(1, 16)


async def garbage_call(ch: grpc.aio.Channel, method: str, body: bytes, metadata: Any) -> grpc.StatusCode | str:
    """One call of ``method`` with ``body`` as its raw request; the status code it got."""
    try:
        if method == FETCH_METHOD:
            call = ch.unary_stream(method)(body, timeout=10, metadata=metadata)
            async for _ in call:
                pass
        else:
            async def gen() -> AsyncIterator[bytes]:
                yield body

            await ch.stream_unary(method)(gen(), timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INTERNAL and (exc.details() or "").startswith("Internal error from Core"):
            # The attacker's own grpc core failed to send the body because the server had
            # already refused and closed the stream (the refusal races the send): not a status
            # the server answered. Counted apart, never as a server's INTERNAL.
            return SEND_FAILED
        if exc.code() in NEVER:
            ODD.append(f"{method}: {exc.code().name} {exc.details()!r} {exc.debug_error_string()[:300]}")
        return exc.code()
    return grpc.StatusCode.OK


async def garbage_calls(port: int, key: bytes, signed: bool, n: int = 1000,
                        peer: str = "member") -> collections.Counter[grpc.StatusCode | str]:
    """``n`` garbage-body calls, half FetchState and half PushShard (with ``key``'s credential).

    50 at a time without a credential; with one, 8 at a time (one peer's stream cap).
    """
    rng = random.Random(15 + signed)
    codes: collections.Counter[grpc.StatusCode | str] = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        step = 8 if signed else 50
        for start in range(0, n, step):
            batch = []
            for i in range(start, min(n, start + step)):
                method = (FETCH_METHOD, PUSH_METHOD)[i % 2]
                md = auth.credential(key, peer, method) if signed else None
                batch.append(garbage_call(ch, method, garbage(rng), md))
            codes.update(await asyncio.gather(*batch))
    return codes
