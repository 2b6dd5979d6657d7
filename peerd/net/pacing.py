"""Upload and download caps: a token bucket that paces the transport's chunks.

A home link of a few Mbit/s is shared with a household; an unpaced exchange fills it (and its
router's buffer) for the length of the transfer. The transport takes tokens for every chunk it
hands to gRPC (sends) or reads from it (receives: a receiver that stops reading makes TCP's flow
control slow the sender down), so the bytes that cross the link stay within the cap averaged over
any window longer than a chunk's time at the cap. Chunks are cut small enough when a cap is set
(:meth:`Pacer.chunk_bytes`), so that window is a fraction of a second rather than a 1 MiB chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# A paced chunk takes at most this long at the cap: short bursts, and a smooth rate over a round.
CHUNK_TIME_S = 0.1
MIN_CHUNK_BYTES = 16 << 10


class Pacer:
    """A token bucket shared by every call of one direction (``rate_mbit`` 0: unlimited)."""

    def __init__(self, rate_mbit: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Bytes per second from Mbit/s; the bucket holds one chunk's worth (no long bursts)."""
        self.rate = rate_mbit * 1e6 / 8
        self.clock = clock
        self.burst = max(MIN_CHUNK_BYTES, self.rate * CHUNK_TIME_S)
        self._tokens = self.burst
        self._at = clock()
        self._lock = asyncio.Lock()
        self.paced_bytes = 0
        self.waited_s = 0.0

    @property
    def enabled(self) -> bool:
        """Whether a cap is set."""
        return self.rate > 0

    def chunk_bytes(self, configured: int) -> int:
        """Chunk size to use: ``configured``, cut to about CHUNK_TIME_S at the cap when capped."""
        if not self.enabled:
            return configured
        return max(1024, min(configured, int(self.burst)))

    def seconds_for(self, nbytes: int) -> float:
        """Time ``nbytes`` take at the cap (0 when uncapped): for deadlines that allow for the cap."""
        return nbytes / self.rate if self.enabled else 0.0

    async def take(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may cross the link; concurrent callers are served in turn."""
        if not self.enabled or nbytes <= 0:
            return
        async with self._lock:  # one waiter at a time: FIFO, and the bucket is never overdrawn twice
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= nbytes
            self.paced_bytes += nbytes
            if self._tokens < 0:
                wait = -self._tokens / self.rate
                self.waited_s += wait
                await asyncio.sleep(wait)
