"""A channel closed under a call (the view forgot the peer) is a failed call, not a cancelled task.

``grpc.aio`` cancels a channel's calls when the channel is closed, and they raise
``asyncio.CancelledError``. Seen under load: a view refresh that missed one record (a slow DHT
read) closed the channel of a dial-back in flight, the reachability loop ended "cancelled", and the
daemon exited 1 ("reachability ended unexpectedly"). The real client transport against a real
server that holds the call open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from peerd.core.config import load_config
from peerd.net.serving import SERVICE
from peerd.net.transport import Transport
from peerd.net.wire import ChannelClosed


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """A server whose DialBack answers only after 30 s (a helper busy dialling)."""
    server = grpc.aio.server()

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    handler = grpc.method_handlers_generic_handler(SERVICE, {"DialBack": grpc.unary_unary_rpc_method_handler(slow)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def client() -> Transport:
    return Transport(load_config(None, ["transport.host=127.0.0.1"]).transport, lambda d, n: None, lambda r: None)


async def started_call(t: Transport, endpoint: str) -> asyncio.Task:
    task = asyncio.ensure_future(t.dial_back(endpoint, "127.0.0.1:1", "run"))
    for _ in range(100):  # until the channel exists and the call is on it
        await asyncio.sleep(0.02)
        if endpoint in t._channels:
            break
    await asyncio.sleep(0.2)
    assert not task.done()
    return task


async def test_a_call_whose_channel_is_forgotten_fails_with_channel_closed(slow_server: str) -> None:
    t = client()
    task = await started_call(t, slow_server)
    await t.forget([slow_server])
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(task, 10)
    assert not task.cancelled()
    assert isinstance(task.exception(), ConnectionError)  # what callers already treat as a failed peer
    await t.stop(0)


async def test_cancelling_the_calling_task_still_cancels_it(slow_server: str) -> None:
    t = client()
    task = await started_call(t, slow_server)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    await t.stop(0)
