"""Well-formed but huge updates from an insider are dropped (contributions) or refused (reduced shards).

Real gRPC server with the daemon's Diloco sink (see test_bad_streams); a contribution or reduced
shard whose RMS is far above the round's median never reaches the outer step.
"""

from __future__ import annotations

import grpc
import pytest
import torch

from peerd.core import codec
from peerd.mixing.inbox import Shard
from peerd.net.transport import checksum
from peerd.proto.v1 import peer_pb2
from tests.integration.test_bad_streams import Harness, good_header, harness, open_plan, push  # noqa: F401

MEMBERS = ("me", "other", "third")


def scaled(h: Harness, plan, sender: str, scale: float) -> tuple[peer_pb2.ShardHeader, bytes]:
    header, _ = good_header(h, plan, sender)
    payload = codec.encode(torch.full((header.numel,), 0.01 * scale), "int8", 256)
    header.payload_bytes, header.checksum = len(payload), checksum(payload)
    return header, payload


async def test_huge_contribution_is_dropped_from_the_reduce_and_counted(harness: Harness) -> None:  # noqa: F811
    h = harness
    counted: list[str] = []
    h.diloco.on_rejected = counted.append
    plan = open_plan(h, MEMBERS)
    rs = h.diloco.inbox.get(plan.round)
    numel = good_header(h, plan)[0].numel
    rs.contributions["me"] = Shard(16.0, torch.full((numel,), 0.012))  # this peer's own contribution
    for sender, scale in (("other", 1.0), ("third", 1e4)):
        header, payload = scaled(h, plan, sender, scale)
        await push(h, header, [payload])
    assert set(rs.contributions) == {"me", "other", "third"}  # well-formed: accepted on the wire
    reduced = h.diloco._reduce(rs)
    assert set(reduced.contributors) == {"me", "other"} and counted == ["norm_outlier"]
    assert float(reduced.values.abs().max()) < 0.02  # the mean of the honest two only


async def test_huge_reduced_shard_is_refused(harness: Harness) -> None:  # noqa: F811
    h = harness
    plan = open_plan(h, MEMBERS)
    rs = h.diloco.inbox.get(plan.round)
    numel = good_header(h, plan)[0].numel
    # The contributions this peer holds for its own shard set the scale (median of three).
    for name, v in (("me", 0.01), ("other", 0.012), ("third", 0.009)):
        rs.contributions[name] = Shard(16.0, torch.full((numel,), v))
    owner = next(m for m in plan.members if m != "me")
    header, payload = scaled(h, plan, owner, 1e4)
    header.kind = peer_pb2.PAYLOAD_KIND_REDUCED
    header.shard = plan.index_of(owner)
    start, end = rs.bounds[header.shard]
    header.numel = end - start
    payload = codec.encode(torch.full((header.numel,), 100.0), "int8", 256)
    header.payload_bytes, header.checksum = len(payload), checksum(payload)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await push(h, header, [payload])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "norm" in (err.value.details() or "")
    assert rs.reduced == {}
    # The same owner's honest reduced shard is accepted.
    payload = codec.encode(torch.full((header.numel,), 0.01), "int8", 256)
    header.payload_bytes, header.checksum = len(payload), checksum(payload)
    await push(h, header, [payload])
    assert header.shard in rs.reduced
