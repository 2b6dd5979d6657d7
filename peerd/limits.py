"""Input caps: per-peer concurrent streams and bytes in flight, and the update-norm gate (pure, no I/O).

A member, honest or not, must not be able to exhaust a peer's memory or connection slots, nor
push the swarm's outer step off with an update far larger than anyone else's. Both checks are
cheap bookkeeping: the transport holds a :class:`PeerLimits` slot for every incoming stream, and
the mixing layer asks a :class:`NormGate` about every contribution before it enters a reduce.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class LimitExceeded(Exception):
    """A peer already uses its share; the message is the refusal detail."""


class PeerLimits:
    """Concurrent incoming streams and announced payload bytes in flight, per peer."""

    def __init__(self, max_streams: int, max_bytes: int) -> None:
        """Caps apply to each peer separately."""
        self.max_streams, self.max_bytes = max_streams, max_bytes
        self._streams: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    @contextmanager
    def hold(self, peer: str, nbytes: int) -> Iterator[None]:
        """Reserve a stream slot and ``nbytes`` for ``peer`` for the duration of the block.

        Raises:
            LimitExceeded: the peer is at its stream or byte cap (nothing is reserved).
        """
        streams, inflight = self._streams.get(peer, 0), self._bytes.get(peer, 0)
        if streams >= self.max_streams:
            raise LimitExceeded(f"more than {self.max_streams} concurrent streams from this peer")
        if inflight + nbytes > self.max_bytes:
            raise LimitExceeded(f"more than {self.max_bytes} bytes in flight from this peer")
        self._streams[peer], self._bytes[peer] = streams + 1, inflight + nbytes
        try:
            yield
        finally:
            self._streams[peer] -= 1
            self._bytes[peer] -= nbytes
            if self._streams[peer] == 0:  # keep the maps as small as the set of active peers
                del self._streams[peer], self._bytes[peer]

    def active(self, peer: str) -> tuple[int, int]:
        """(streams, bytes) currently held by ``peer``."""
        return self._streams.get(peer, 0), self._bytes.get(peer, 0)


def rms(values: torch.Tensor) -> float:
    """Root mean square of a tensor (0 for an empty one), in float64 so huge values do not overflow."""
    return 0.0 if values.numel() == 0 else float(values.double().pow(2).mean().sqrt())


class NormGate:
    """Refuses contributions whose RMS is more than ``factor`` times the round's median.

    The reference is the median RMS of the round's weighted contributions this peer holds (its
    own included) when there are at least three: an outlier can then never set the scale, and
    honest peers whose progress differs a lot (a joiner that trained a few steps since its sync
    next to peers that trained a whole round) still agree with the median. With fewer than
    three nobody can tell which side is off, so every finite value passes. This peer's *own*
    update is deliberately not the reference: a member that barely trained would refuse every
    honest peer and stall the swarm. The reference is never lower than the median of recently
    accepted values (``history`` per fragment), which only widens it: history alone is never
    the reference, because deltas accumulate across aborted rounds and a stale history would
    refuse honest updates forever. RMS rather than the norm makes shards of different sizes
    comparable.
    """

    def __init__(self, factor: float, history: int) -> None:
        """``factor`` > 1; ``history`` accepted values kept per fragment."""
        self.factor = factor
        self._hist: dict[int, deque[float]] = {}
        self._len = history

    def reference(self, fragment: int, values: Sequence[float]) -> float | None:
        """Scale to compare against: the median of ``values`` (None with fewer than three)."""
        peers = [v for v in values if v > 0 and math.isfinite(v)]
        if len(peers) < 3:
            return None
        base = statistics.median(peers)
        hist = self._hist.get(fragment)
        return max(base, statistics.median(hist)) if hist else base

    def admits(self, value: float, reference: float | None) -> bool:
        """Whether an RMS ``value`` is within ``factor`` of ``reference`` (always, in warm-up)."""
        if not math.isfinite(value):
            return False
        return reference is None or value <= self.factor * reference

    def record(self, fragment: int, value: float) -> None:
        """Remember an accepted contribution's RMS (zeros carry no scale information)."""
        if value > 0 and math.isfinite(value):
            self._hist.setdefault(fragment, deque(maxlen=self._len)).append(value)
