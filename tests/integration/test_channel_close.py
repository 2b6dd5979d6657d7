"""Channels closed under calls: a forgotten peer's calls run on; a closed channel's fail, never cancel.

``grpc.aio`` cancels a channel's calls when the channel is closed, and they raise
``asyncio.CancelledError``. Seen under load: a view refresh that missed one record (a slow DHT
read) closed the channel of a dial-back in flight, the reachability loop ended "cancelled", and the
daemon exited 1 ("reachability ended unexpectedly"). Now ``forget`` lets calls on the channel
finish, and a call whose channel is closed anyway (``stop``) fails with ``ChannelClosed``. The real
client transport against a real server that holds the call open.
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
from peerd.proto.v1 import peer_pb2


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """A server whose DialBack answers after 1.5 s (a helper busy dialling)."""
    server = grpc.aio.server()

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(1.5)
        return peer_pb2.DialBackReply(reachable=True, detail="dialled back").SerializeToString()

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


async def test_a_call_to_a_forgotten_peer_runs_to_its_answer(slow_server: str) -> None:
    t = client()
    task = await started_call(t, slow_server)
    await t.forget([slow_server])
    assert slow_server not in t._channels  # the next call opens a fresh channel
    result = await asyncio.wait_for(task, 10)
    assert result.reachable and result.detail == "dialled back"
    await t.stop(0)
    assert not t._retired


async def test_a_call_whose_channel_is_closed_fails_with_channel_closed(slow_server: str) -> None:
    t = client()
    task = await started_call(t, slow_server)
    await t.forget([slow_server])
    await t.stop(0)  # closes retired channels at once: their calls are cut
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(task, 10)
    assert not task.cancelled()
    assert isinstance(task.exception(), ConnectionError)  # what callers already treat as a failed peer


async def test_cancelling_the_calling_task_still_cancels_it(slow_server: str) -> None:
    t = client()
    task = await started_call(t, slow_server)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    await t.stop(0)
