"""The delay line's arithmetic (queues and links), without devices or root."""

from __future__ import annotations

import pytest

from bench.wan import PROFILES, profiles
from bench.wan.delayline import Link, Queue


def test_queue_paces_packets_at_its_rate_and_drops_beyond_its_depth() -> None:
    q = Queue(rate_bps=12e6, limit_s=0.0105)  # a 1500-byte packet takes 1 ms
    times = [q.admit(0.0, 1500) for _ in range(12)]
    assert times[:11] == pytest.approx([0.001 * (k + 1) for k in range(11)])
    assert times[11] is None  # 11 ms of backlog > 10.5 ms of buffer
    assert q.admit(0.05, 1500) == pytest.approx(0.051)  # drained: no wait


def test_small_packets_skip_the_backlog_but_use_the_rate() -> None:
    q = Queue(rate_bps=12e6, limit_s=0.1)
    for _ in range(50):
        q.admit(0.0, 1500)
    assert q.admit(0.0, 52) == pytest.approx(52 * 8 / 12e6)  # an ACK does not wait 50 ms
    assert q.admit(0.0, 1500) == pytest.approx(0.050 + 52 * 8 / 12e6 + 0.001)


def test_unshaped_queue_is_transparent() -> None:
    q = Queue(rate_bps=None, limit_s=0.0)
    assert [q.admit(1.0, 1500) for _ in range(1000)] == [1.0] * 1000


def test_link_loss_is_seeded_and_near_its_probability() -> None:
    def drops(seed: str) -> list[int]:
        link = Link(0.1, 0.0, 0.01, seed)
        return [k for k in range(20000) if link.arrival(float(k)) is None]

    a = drops("1:0:1")
    assert a == drops("1:0:1") and a != drops("2:0:1")
    assert 120 <= len(a) <= 280  # 200 expected, sd 14


def test_jitter_never_reorders_and_keeps_the_mean_delay() -> None:
    link = Link(0.1, 0.02, 0.0, "3")
    arrivals = [link.arrival(k * 1e-3) for k in range(20000)]
    assert arrivals == sorted(arrivals)
    delays = [t - k * 1e-3 for k, t in enumerate(arrivals)]  # type: ignore[operator]
    assert min(delays) >= 0.08 - 1e-9 and max(delays) <= 0.12 + 1e-9
    assert max(delays) - min(delays) > 0.02  # it does vary
    assert abs(sum(delays) / len(delays) - 0.1) < 0.005  # about 250 knots of mean 0, sd 0.0115 each


def test_profile_rtt_is_split_into_two_directions() -> None:
    ic, lan = PROFILES["intercontinental"], PROFILES["lan"]
    assert profiles.link_params(ic, ic)["delay_s"] * 2 == pytest.approx(0.2)
    assert profiles.link_params(ic, lan)["delay_s"] * 2 == pytest.approx(0.1005)
    assert profiles.link_params(ic, lan)["loss"] == 0.005
    with pytest.raises(ValueError, match="unknown WAN profile"):
        profiles.get("moon")
