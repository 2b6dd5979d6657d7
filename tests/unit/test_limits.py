"""Per-peer stream/byte caps and the update-norm gate (pure bookkeeping)."""

from __future__ import annotations

import math

import pytest
import torch

from peerd.net.limits import LimitExceeded, NormGate, PeerLimits, rms


def test_peer_limits_cap_streams_and_bytes_per_peer_and_release() -> None:
    lim = PeerLimits(max_streams=2, max_bytes=100)
    with lim.hold("a", 40), lim.hold("a", 40):
        with pytest.raises(LimitExceeded, match="streams"):
            with lim.hold("a", 1):
                pass
        with lim.hold("b", 100):  # another peer has its own share
            assert lim.active("b") == (1, 100)
        assert lim.active("a") == (2, 80)
    with lim.hold("a", 60):
        with pytest.raises(LimitExceeded, match="bytes"):
            with lim.hold("a", 41):
                pass
    assert lim.active("a") == (0, 0)
    with pytest.raises(RuntimeError), lim.hold("a", 10):  # released on errors too
        raise RuntimeError
    assert lim.active("a") == (0, 0)


def test_norm_gate_uses_the_median_of_three_or_more_from_round_one() -> None:
    gate = NormGate(factor=10, history=4)
    ref = gate.reference(0, [1.0, 0.9, 1e4])
    assert ref == 1.0 and gate.admits(5.0, ref) and not gate.admits(1e4, ref)
    assert not gate.admits(math.nan, ref) and not gate.admits(math.inf, None)


def test_norm_gate_a_peer_that_barely_trained_does_not_refuse_honest_peers() -> None:
    """The regression that stalled an 8-peer swarm: a member whose own update was tiny (it had
    just synced) refused every honest contribution when its own update was the reference."""
    gate = NormGate(factor=10, history=3)
    ref = gate.reference(0, [1e-4, 1.0, 1.3])  # own 1e-4, two honest peers that trained a full round
    assert gate.admits(1.0, ref) and gate.admits(1.3, ref)


def test_norm_gate_follows_growth_and_history_only_widens() -> None:
    gate = NormGate(factor=10, history=3)
    for v in (1.0, 2.0, 3.0, 4.0):
        gate.record(1, v)
    # Deltas accumulate across aborted rounds: all grew 50x together: admitted.
    assert gate.reference(1, [50.0, 55.0, 60.0]) == 55.0 and gate.admits(60.0, gate.reference(1, [50.0, 55.0, 60.0]))
    assert gate.reference(1, [0.1, 0.1, 0.2]) == 3.0  # history (median of the last 3) widens a small median
    assert gate.reference(2, [0.1, 0.1, 0.2]) == 0.1  # per fragment
    gate.record(1, 0.0)  # zeros carry no scale information
    assert gate.reference(1, [0.1, 0.1, 0.2]) == 3.0


def test_norm_gate_needs_three_values() -> None:
    gate = NormGate(factor=10, history=3)
    gate.record(0, 1.0)
    assert gate.reference(0, [1.0, 1e4]) is None  # two: cannot tell who is off
    assert gate.reference(0, [0.0, 1.0, 1e4]) is None  # zeros (no update) carry no scale
    ref = gate.reference(0, [1.0, 1.2, 1e4])
    assert ref == 1.2 and not gate.admits(1e4, ref)


def test_rms_is_size_independent_and_does_not_overflow() -> None:
    assert rms(torch.ones(10)) == pytest.approx(1.0) == rms(torch.ones(1000))
    assert rms(torch.full((4,), 3e38)) == pytest.approx(3e38)
    assert rms(torch.zeros(0)) == 0.0
