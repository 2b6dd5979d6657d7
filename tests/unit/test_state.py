"""Fragment partition, shard bounds, outer Nesterov step determinism and atomic installs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.fragments import FragmentLayout, layer_index, shard_bounds
from peerd.core.state import OuterState

SHAPES = [("embed.weight", (256, 16)), ("blocks.0.w", (16, 16)), ("blocks.0.b", (16,)),
          ("blocks.1.w", (16, 16)), ("blocks.2.w", (16, 16)), ("blocks.3.w", (16, 16)), ("head.weight", (256, 16))]


def test_layer_index() -> None:
    assert layer_index("blocks.12.attn.weight") == 12
    assert layer_index("embed.weight") is None


def test_strided_partition_balanced_and_complete() -> None:
    layout = FragmentLayout.build(SHAPES, 2)
    assert set(layout.names[0]) >= {"blocks.0.w", "blocks.0.b", "blocks.2.w"}
    assert set(layout.names[1]) >= {"blocks.1.w", "blocks.3.w"}
    assert sorted(n for f in layout.names for n in f) == sorted(n for n, _ in SHAPES)
    assert sum(layout.numels) == sum(torch.Size(s).numel() for _, s in SHAPES)
    assert FragmentLayout.build(list(reversed(SHAPES)), 2).numels == layout.numels
    with pytest.raises(ValueError, match="num_fragments"):
        FragmentLayout.build(SHAPES, 100)


@given(st.integers(0, 5000), st.integers(1, 9), st.sampled_from([8, 64, 256]))
@settings(max_examples=200, deadline=None)
def test_shard_bounds_cover_and_align(numel: int, n: int, block: int) -> None:
    bounds = shard_bounds(numel, n, block)
    assert len(bounds) == n and bounds[0][0] == 0 and bounds[-1][1] == numel
    for (s0, e0), (s1, _) in zip(bounds, bounds[1:], strict=False):
        assert e0 == s1 and s0 <= e0
    for s, _ in bounds:
        assert s % block == 0 or s == numel


def make_state(seed: int = 0) -> OuterState:
    layout = FragmentLayout.build(SHAPES, 2)
    g = torch.Generator().manual_seed(seed)
    return OuterState(layout, [torch.randn(n, generator=g) for n in layout.numels])


def test_outer_step_is_bit_identical_across_instances_and_matches_torch_sgd() -> None:
    a, b = make_state(), make_state()
    deltas = [torch.randn(a.layout.numels[0], generator=torch.Generator().manual_seed(i)) for i in range(5)]
    ref = torch.nn.Parameter(a.theta(0))
    opt = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=True)
    for i, d in enumerate(deltas):
        a.apply_outer_step(0, d, 0.7, 0.9, True, expected_revision=i)
        b.apply_outer_step(0, d.clone(), 0.7, 0.9, True, expected_revision=i)
        ref.grad = d.clone()
        opt.step()
    assert a.state_hash() == b.state_hash() and a.revision == 5
    assert torch.equal(a.theta(0), b.theta(0))
    torch.testing.assert_close(a.theta(0), ref.detach(), rtol=1e-6, atol=1e-6)


def test_failed_updates_leave_state_untouched() -> None:
    s = make_state()
    before = s.state_hash()
    with pytest.raises(ValueError):
        s.apply_outer_step(0, torch.zeros(3), 0.7, 0.9, True, expected_revision=0)
    with pytest.raises(ValueError):
        s.apply_outer_step(0, torch.zeros(s.layout.numels[0]), 0.7, 0.9, True, expected_revision=9)
    with pytest.raises(ValueError):
        s.install(3, {0: torch.zeros(2)}, {0: torch.zeros(2)})
    assert s.state_hash() == before and s.revision == 0


def test_install_adopts_donor_state_exactly() -> None:
    donor, joiner = make_state(1), make_state(2)
    donor.apply_outer_step(1, torch.ones(donor.layout.numels[1]), 0.5, 0.9, True, 0)
    snap = donor.snapshot()
    joiner.install(snap.revision, dict(snap.theta), dict(snap.momentum))
    assert joiner.state_hash() == donor.state_hash()


def test_state_sync_parts_from_two_donors_merge_and_verify() -> None:
    from peerd.mixing.sync import SyncError, merge_parts, serve_state, verify_state
    from peerd.proto.v1 import peer_pb2

    donor, joiner = make_state(1), make_state(1)
    donor.apply_outer_step(0, torch.ones(donor.layout.numels[0]), 0.5, 0.9, True, 0)
    donor.apply_outer_step(1, torch.ones(donor.layout.numels[1]), 0.5, 0.9, True, 1)
    parts = []
    for frags in ([0], [1]):
        req = peer_pb2.FetchStateRequest(run_id="r", requester="j", fragment_hashes=list(joiner.fragment_hashes),
                                         fragments=frags)
        header, payload = serve_state(donor, "r", req)
        assert list(header.fragments) == frags
        parts.append(verify_state(joiner, header, payload, 0.1, set(frags)))
    merged = merge_parts(parts, joiner.fragment_hashes)
    joiner.install(merged.revision, merged.theta, merged.momentum)
    assert joiner.state_hash() == donor.state_hash()
    # A part alone leaves fragment 1 stale: refused instead of installing a mix.
    with pytest.raises(SyncError):
        merge_parts(parts[:1], make_state(1).fragment_hashes)
    # A corrupted payload fails its fragment hash.
    req = peer_pb2.FetchStateRequest(run_id="r", requester="j", fragment_hashes=list(make_state(1).fragment_hashes))
    header, payload = serve_state(donor, "r", req)
    bad = bytearray(payload)
    bad[5] ^= 1
    with pytest.raises(SyncError, match="hash mismatch"):
        verify_state(make_state(1), header, bytes(bad), 0.1)
