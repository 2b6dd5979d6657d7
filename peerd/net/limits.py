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
    """Concurrent incoming streams and announced payload bytes in flight, per peer and server-wide.

    A stream takes its slot from its first byte (before its header is read or admitted, and while
    it waits for its round's plan), so idle or stalled streams count against their sender. Caps:
    ``max_streams`` per peer id (the credential's, or the address without a swarm secret),
    ``max_per_address`` per source address (a member can claim several peer ids: the secret is
    shared) and ``max_total`` for the whole server, so no single peer or address can take the
    slots every other peer needs. Refusals are immediate, never queued.
    """

    def __init__(self, max_streams: int, max_bytes: int, max_total: int | None = None,
                 max_per_address: int | None = None) -> None:
        """Caps apply to each peer separately; ``None`` leaves the server-wide / per-address cap off."""
        self.max_streams, self.max_bytes = max_streams, max_bytes
        self.max_total, self.max_per_address = max_total, max_per_address
        self._streams: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        self.total = 0

    @contextmanager
    def stream(self, peer: str, address: str = "") -> Iterator[None]:
        """Reserve one stream slot for ``peer`` (from ``address``) for the duration of the block.

        Raises:
            LimitExceeded: the peer, its address or the server is at its stream cap (nothing reserved).
        """
        if self._streams.get(peer, 0) >= self.max_streams:
            raise LimitExceeded(f"more than {self.max_streams} concurrent streams from this peer")
        if self.max_per_address is not None and self._addresses.get(address, 0) >= self.max_per_address:
            raise LimitExceeded(f"more than {self.max_per_address} concurrent streams from this address")
        if self.max_total is not None and self.total >= self.max_total:
            raise LimitExceeded(f"server busy: {self.max_total} concurrent streams")
        self._streams[peer] = self._streams.get(peer, 0) + 1
        self._addresses[address] = self._addresses.get(address, 0) + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            _decrement(self._streams, peer)
            _decrement(self._addresses, address)

    @contextmanager
    def inflight(self, peer: str, nbytes: int) -> Iterator[None]:
        """Reserve ``nbytes`` of announced payload for ``peer`` (its stream slot is held separately).

        Raises:
            LimitExceeded: the peer is at its byte cap (nothing is reserved).
        """
        inflight = self._bytes.get(peer, 0)
        if inflight + nbytes > self.max_bytes:
            raise LimitExceeded(f"more than {self.max_bytes} bytes in flight from this peer")
        self._bytes[peer] = inflight + nbytes
        try:
            yield
        finally:
            _decrement(self._bytes, peer, nbytes)

    @contextmanager
    def hold(self, peer: str, nbytes: int, address: str = "") -> Iterator[None]:
        """A stream slot and ``nbytes`` together (see :meth:`stream` and :meth:`inflight`).

        Raises:
            LimitExceeded: a cap is reached (nothing is reserved).
        """
        with self.stream(peer, address), self.inflight(peer, nbytes):
            yield

    def active(self, peer: str) -> tuple[int, int]:
        """(streams, bytes) currently held by ``peer``."""
        return self._streams.get(peer, 0), self._bytes.get(peer, 0)


def _decrement(counts: dict[str, int], key: str, by: int = 1) -> None:
    left = counts.get(key, 0) - by
    if left > 0:
        counts[key] = left
    else:  # keep the maps as small as the set of active peers
        counts.pop(key, None)


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
