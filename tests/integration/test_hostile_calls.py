"""Hostile calls on a real gRPC server (127.0.0.1) cost the peer a bounded amount of work, log and slots.

The server is the daemon's real Transport (with and without a swarm secret) in front of its Diloco
sink; hostile clients are plain gRPC clients sending raw bytes, so any body can be sent to any
method. Log output is captured through the daemon's own logging setup (JSON lines).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import structlog

from bench.garbage import NEVER, ODD, SEND_FAILED, garbage_calls
from peerd.core.config import SecurityConfig
from peerd.core.log import setup_logging
from peerd.net import auth
from peerd.net.transport import PUSH_METHOD
from peerd.proto.v1 import peer_pb2, peer_pb2_grpc
from tests.integration.test_admission import KEY, SecureHarness, client
from tests.integration.test_bad_streams import Harness, good_header, open_plan

CALLS = 1000
MAX_LOG_BYTES = 10_000


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """The daemon's logging setup (JSON) writing into a buffer; the previous setup is restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, structlog.get_config()
    buf = io.StringIO()
    setup_logging("info", "json")
    root.handlers[0].stream = buf  # type: ignore[attr-defined]
    try:
        yield buf
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        structlog.configure(**saved[2])


async def test_garbage_bodies_with_and_without_credentials_get_precise_codes_and_little_log(
        captured_log: io.StringIO) -> None:
    events: list[tuple[str, bool]] = []
    h = SecureHarness()
    h.transport.remote_log.on_event = lambda reason, logged: events.append((reason, logged))
    await h.transport.start(h.diloco)
    try:
        open_plan(h)
        before = h.state.state_hash()
        outsider = await garbage_calls(h.transport.port, KEY, signed=False, n=CALLS)
        member = await garbage_calls(h.transport.port, KEY, signed=True, n=CALLS, peer="other")
    finally:
        await h.transport.stop(0)
    # No body was parsed for an outsider: every call is refused by admission alone.
    # A rare call the attacker's own grpc core reports as a failed send (the refusal closed it first).
    assert outsider[grpc.StatusCode.UNAUTHENTICATED] + outsider[SEND_FAILED] == CALLS, (outsider, ODD[:5])
    assert outsider[SEND_FAILED] <= CALLS // 100 and not NEVER & set(outsider), (outsider, ODD[:5])
    assert h.refused.count("missing") == CALLS
    # A member's undecodable body is its mistake, said precisely; never UNKNOWN / INTERNAL.
    assert sum(member.values()) == CALLS and not NEVER & set(member), (member, ODD[:5])
    assert member[grpc.StatusCode.INVALID_ARGUMENT] >= CALLS // 2, member
    assert h.state.state_hash() == before
    log = captured_log.getvalue()
    assert len(log.encode()) <= MAX_LOG_BYTES, f"{len(log)} bytes of log:\n{log[:2000]}"
    assert "Unexpected" not in log and "DecodeError" not in log
    # Every refusal was counted, logged or not, and most were not logged.
    assert len(events) == 2 * CALLS
    assert sum(logged for _, logged in events) == log.count('"logger": "peerd.transport"') < 50


async def test_garbage_bodies_on_an_open_swarm_are_invalid_argument(captured_log: io.StringIO) -> None:
    h = Harness()  # no swarm secret: every call reaches the handlers
    await h.transport.start(h.diloco)
    try:
        codes = await garbage_calls(h.transport.port, KEY, signed=False, n=200)
    finally:
        await h.transport.stop(0)
    assert not NEVER & set(codes) and codes[grpc.StatusCode.INVALID_ARGUMENT] >= 100, codes
    assert len(captured_log.getvalue().encode()) <= MAX_LOG_BYTES


async def _idle_push(ch: grpc.aio.Channel, release: asyncio.Event, peer: str) -> grpc.StatusCode:
    """A PushShard stream that never sends a byte (not even a header) until ``release``."""
    async def gen() -> AsyncIterator[peer_pb2.ShardChunk]:
        await release.wait()
        return
        yield  # an async generator that yields nothing

    try:
        await peer_pb2_grpc.PeerStub(ch).PushShard(gen(), timeout=30, metadata=auth.credential(KEY, peer, PUSH_METHOD))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_member_holding_300_idle_streams_cannot_deny_another_push_or_a_joiners_fetch() -> None:
    # chunk_timeout_s is 2 s in the harness: the honest calls must get through while the idle ones are held.
    h = SecureHarness(SecurityConfig(max_concurrent_rpcs=256, max_streams_per_peer=8))
    await h.transport.start(h.diloco)
    release = asyncio.Event()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.transport.port}",
                                          options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(10)]
    honest, joiner = client(peer_id="other"), client(peer_id="joiner")
    try:
        plan = open_plan(h)
        idle = [asyncio.create_task(_idle_push(channels[i % 10], release, "hog")) for i in range(300)]

        async def held() -> bool:
            while h.transport.limits.active("hog")[0] < 8:
                await asyncio.sleep(0.02)
            return True

        await asyncio.wait_for(held(), 10)  # the hog's share is taken before any header
        header, payload = good_header(h, plan)
        endpoint = f"127.0.0.1:{h.transport.port}"
        await asyncio.wait_for(honest.push_shard(endpoint, header, payload, 10), 15)
        assert "other" in h.diloco.inbox.get(plan.round).contributions
        req = peer_pb2.FetchStateRequest(run_id="peerd", requester="joiner")
        state_header, data = await asyncio.wait_for(joiner.fetch_state(endpoint, req, max_bytes=1 << 24), 15)
        assert state_header.total_bytes == len(data) > 0
        assert h.transport.limits.active("hog")[0] <= 8
        release.set()
        codes = collections.Counter(await asyncio.wait_for(asyncio.gather(*idle), 30))
        # At most the hog's share ever got a slot; the rest were refused at once.
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 292, codes
        assert not NEVER & set(codes), codes
    finally:
        release.set()
        for ch in channels:
            await ch.close()
        await honest.stop(0)
        await joiner.stop(0)
        await h.transport.stop(0)
    assert h.transport.limits.total == 0


async def test_a_stream_waiting_for_its_plan_holds_its_peers_slot() -> None:
    h = SecureHarness(SecurityConfig(max_streams_per_peer=1))
    await h.transport.start(h.diloco)
    c = client()
    try:
        round_s = h.cfg.round.round_s
        # The receiver waits (bounded) for the plan of the current round; make sure >= 5 s of that wait remain.
        if time.time() % round_s > 0.9 * round_s - 5:
            await asyncio.sleep(round_s - time.time() % round_s + 0.01)
        plan = open_plan(h)
        header, payload = good_header(h, plan)
        h.diloco.inbox._rounds.pop(plan.round)  # this peer has not read the round's plan yet
        h.diloco.inbox._plan_ready.pop(plan.round, None)
        waiting = asyncio.create_task(c.push_shard(f"127.0.0.1:{h.transport.port}", header, payload, 10))

        async def holds() -> None:
            while h.transport.limits.active("other")[0] < 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(holds(), 5)
        assert not waiting.done()
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the waiting stream uses the peer's only slot
            await c.push_shard(f"127.0.0.1:{h.transport.port}", header, payload, 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        h.diloco.inbox.open_round(plan)  # the plan arrives: the waiting stream is admitted and delivered
        await asyncio.wait_for(waiting, 15)
        assert "other" in h.diloco.inbox.get(plan.round).contributions
    finally:
        await c.stop(0)
        await h.transport.stop(0)
