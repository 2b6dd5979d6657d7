"""What this peer has measured of its network: round-trip time, DHT operation time, push throughput.

The round clock (peerd/core/clock.py) sizes a round's phases from these figures instead of
fractions tuned on loopback: a plan slot must cover a DHT read plus a one-way hop, the reduce
phase a round trip and a shard's transfer time. Samples come from the calls the peer makes
anyway (plan offers are one small round trip, pushes carry known bytes, DHT reads and stores are
timed by the round driver); nothing is sent to measure. Estimates are high quantiles of recent
samples, so one lucky call does not shrink a deadline, and a peer without samples yet falls
back to the configured times.
"""

from __future__ import annotations

from collections import deque

WINDOW = 32  # recent samples per figure
# A high quantile, but not the maximum: a stall of this peer's own box (a busy loop, a GC
# pause) inflates one sample by seconds, and that is not the network's speed.
QUANTILE = 0.75
# Pushes smaller than this measure latency, not throughput.
MIN_THROUGHPUT_BYTES = 32 << 10


def _quantile(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class NetEstimate:
    """Recent round trips, DHT operation times and push throughput of one peer."""

    def __init__(self) -> None:
        """No samples yet: every estimate is None until the first call is timed."""
        self._rtt: deque[float] = deque(maxlen=WINDOW)
        self._dht: deque[float] = deque(maxlen=WINDOW)
        self._rate: deque[float] = deque(maxlen=WINDOW)

    def rtt(self, seconds: float) -> None:
        """A small request/reply call took ``seconds``."""
        if 0 <= seconds < 60:
            self._rtt.append(seconds)

    def dht(self, seconds: float) -> None:
        """A DHT read or store took ``seconds``."""
        if 0 <= seconds < 60:
            self._dht.append(seconds)

    def push(self, nbytes: int, seconds: float) -> None:
        """A push of ``nbytes`` completed in ``seconds`` (header, payload and reply)."""
        if nbytes < MIN_THROUGHPUT_BYTES or seconds <= 0:
            return
        # The push costs about one and a half round trips besides its bytes.
        transfer = seconds - 1.5 * (self.rtt_s or 0.0)
        self._rate.append(nbytes / max(transfer, 0.1 * seconds))

    @property
    def rtt_s(self) -> float | None:
        """A high quantile of recent round trips (None: not measured yet)."""
        return _quantile(self._rtt, QUANTILE)

    @property
    def dht_s(self) -> float | None:
        """A high quantile of recent DHT operation times (None: not measured yet)."""
        return _quantile(self._dht, QUANTILE)

    @property
    def bytes_per_s(self) -> float | None:
        """A low quantile of recent push throughputs (None: not measured yet)."""
        return _quantile(self._rate, 1.0 - QUANTILE)

    def transfer_s(self, nbytes: int) -> float:
        """Time to push ``nbytes`` to a peer: one and a half round trips plus the bytes at the measured rate."""
        rate = self.bytes_per_s
        return 1.5 * (self.rtt_s or 0.0) + (nbytes / rate if rate else 0.0)

    def summary(self) -> dict[str, float | None]:
        """Current estimates, for status and logs."""
        return {"rtt_s": self.rtt_s, "dht_s": self.dht_s, "bytes_per_s": self.bytes_per_s}
