"""A real gRPC server refuses malformed fragment streams with an error status, state untouched.

The receiving side is the daemon's own Diloco sink behind the real transport on 127.0.0.1; the
sender is a plain gRPC client speaking the wire protocol directly, so every field can be wrong.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
import torch

from peerd.core import codec
from peerd.core.config import load_config
from peerd.core.fragments import FragmentLayout, shard_bounds
from peerd.core.schedule import Candidate, make_plan, rendezvous_order
from peerd.core.state import OuterState
from peerd.net.transport import MAX_CHUNK_BYTES, Transport, checksum
from peerd.proto.v1 import peer_pb2, peer_pb2_grpc
from tests.fakes import make_diloco

SHAPES = [("blocks.0.w", (64, 64)), ("blocks.1.w", (64, 64)), ("head.w", (10, 64))]


class Harness:
    def __init__(self) -> None:
        self.cfg = load_config(None, ["transport.host=127.0.0.1", "round.round_s=30", "transport.chunk_timeout_s=2"])
        layout = FragmentLayout.build(SHAPES, 2)
        g = torch.Generator().manual_seed(0)
        self.state = OuterState(layout, [torch.randn(n, generator=g) for n in layout.numels])
        self.diloco = make_diloco(self.cfg, "me", self.state)
        self.rejected: list[str] = []
        self.transport = Transport(self.cfg.transport, lambda d, n: None, self.rejected.append)

@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    await h.transport.start(h.diloco)
    yield h
    await h.transport.stop(0)


def open_plan(h: Harness, members: tuple[str, ...] = ("me", "other")):
    now = time.time()
    r = int(now // h.cfg.round.round_s)
    cands = [Candidate(m, f"127.0.0.1:{1 + i}", 0, h.state.state_hash(), True, False) for i, m in enumerate(members)]
    publisher = rendezvous_order(h.cfg.run_id, r, members)[0]
    plan = make_plan(h.cfg.run_id, r, 2, publisher, cands, h.cfg.round.round_s, 0.9, now)
    assert plan is not None
    # Give the test a full round of time regardless of where in the round we are.
    plan = type(plan)(**{**plan.__dict__, "collect_deadline": now + 20, "deadline": now + 25})
    h.diloco.inbox.open_round(plan)
    return plan


def good_header(h: Harness, plan, sender: str = "other") -> tuple[peer_pb2.ShardHeader, bytes]:
    me = plan.index_of("me")
    start, end = shard_bounds(h.state.layout.numels[plan.fragment], len(plan.members), 256)[me]
    payload = codec.encode(torch.full((end - start,), 0.01), "int8", 256)
    header = peer_pb2.ShardHeader(
        run_id=h.cfg.run_id, round=plan.round, fragment=plan.fragment, revision=0, sender=sender,
        plan_id=plan.plan_id, kind=peer_pb2.PAYLOAD_KIND_CONTRIBUTION, shard=me, numel=end - start,
        codec="int8", block_size=256, weight=16.0, payload_bytes=len(payload), checksum=checksum(payload),
    )
    return header, payload


async def push(h: Harness, header: peer_pb2.ShardHeader, chunks: list[bytes]) -> peer_pb2.PushShardResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.transport.port}") as ch:
        stub = peer_pb2_grpc.PeerStub(ch)

        async def gen():
            yield peer_pb2.ShardChunk(header=header)
            for c in chunks:
                yield peer_pb2.ShardChunk(data=c)

        return await stub.PushShard(gen(), timeout=10)


async def test_valid_contribution_is_accepted(harness: Harness) -> None:
    plan = open_plan(harness)
    header, payload = good_header(harness, plan)
    reply = await push(harness, header, [payload[:1000], payload[1000:]])
    assert reply.accepted_bytes == len(payload)
    assert "other" in harness.diloco.inbox.get(plan.round).contributions


def _mutations(h: Harness, plan):
    def mut(**kw):
        header, payload = good_header(h, plan)
        for k, v in kw.items():
            setattr(header, k, v)
        return header, payload

    other_fragment = (plan.fragment + 1) % 2
    yield "wrong fragment id", mut(fragment=other_fragment), grpc.StatusCode.INVALID_ARGUMENT
    yield "wrong shape", mut(numel=17), grpc.StatusCode.INVALID_ARGUMENT
    header, payload = good_header(h, plan)
    header.payload_bytes += 4
    yield "wrong size", (header, payload + b"\0" * 4), grpc.StatusCode.INVALID_ARGUMENT
    yield "wrong codec", mut(codec="int4"), grpc.StatusCode.INVALID_ARGUMENT
    yield "wrong block size", mut(block_size=64), grpc.StatusCode.INVALID_ARGUMENT
    yield "unknown codec", mut(codec="pickle"), grpc.StatusCode.INVALID_ARGUMENT
    yield "wrong run", mut(run_id="evil"), grpc.StatusCode.PERMISSION_DENIED
    yield "not a member", mut(sender="stranger"), grpc.StatusCode.PERMISSION_DENIED
    yield "other plan", mut(plan_id="deadbeef"), grpc.StatusCode.FAILED_PRECONDITION
    yield "wrong revision", mut(revision=7), grpc.StatusCode.INVALID_ARGUMENT
    yield "negative weight", mut(weight=-1.0), grpc.StatusCode.INVALID_ARGUMENT
    yield "NaN weight", mut(weight=float("nan")), grpc.StatusCode.INVALID_ARGUMENT
    yield "bad checksum", mut(checksum=b"0" * 16), grpc.StatusCode.DATA_LOSS
    header, payload = good_header(h, plan)
    nan_payload = codec.encode(torch.zeros(header.numel), "fp32", 256)
    yield "payload for a different codec", (header, nan_payload[: len(payload)]), grpc.StatusCode.DATA_LOSS


async def test_malformed_streams_are_refused_and_state_untouched(harness: Harness) -> None:
    plan = open_plan(harness)
    before = harness.state.state_hash()
    for name, (header, payload), code in _mutations(harness, plan):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await push(harness, header, [payload])
        assert err.value.code() == code, name
        assert harness.diloco.inbox.get(plan.round).contributions == {}, name
    assert harness.state.state_hash() == before and harness.state.revision == 0
    assert len(harness.rejected) >= 14


async def test_truncated_and_oversized_streams_are_refused(harness: Harness) -> None:
    plan = open_plan(harness)
    header, payload = good_header(harness, plan)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(harness, header, [payload[:100]])  # stream ends early
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(harness, header, [payload, b"extra"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(harness, header, [b"x" * (MAX_CHUNK_BYTES + 1)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert harness.diloco.inbox.get(plan.round).contributions == {}


async def test_non_finite_payload_is_refused(harness: Harness) -> None:
    plan = open_plan(harness)
    header, payload = good_header(harness, plan)
    bad = bytearray(payload)
    bad[0:4] = b"\x00\x00\xc0\x7f"  # first block scale = NaN
    header.checksum = checksum(bytes(bad))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(harness, header, [bytes(bad)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert harness.diloco.inbox.get(plan.round).contributions == {}


async def test_push_for_unknown_round_is_refused_without_waiting_forever(harness: Harness) -> None:
    plan = open_plan(harness)
    header, payload = good_header(harness, plan)
    header.round = plan.round + 1000
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(harness, header, [payload])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert time.monotonic() - t0 < 5
