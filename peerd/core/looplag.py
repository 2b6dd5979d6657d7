"""Event-loop lag: how late the daemon's loop runs a callback it scheduled.

Every deadline of the round protocol is met or missed on the loop thread. When the box is
starved (more runnable threads than cores, or the worker holding the GIL while the OS has
descheduled it), the loop wakes late and every phase slips by that much, whatever the network
does. This probe sleeps ``period_s`` again and again and records how much longer each sleep took:
the ``peerd_event_loop_lag_seconds`` histogram for operators, and a bounded sample for the run
summary (quantiles), so that a bench can tell a slow network from a starved loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Histogram

from peerd.core.clock import SYSTEM, Clock

KEEP = 4096  # lags kept for the summary's quantiles (the most recent ones)


class LoopLag:
    """Samples the lag of the running event loop; the histogram is the operator's view."""

    def __init__(self, histogram: Histogram, clock: Clock = SYSTEM, period_s: float = 0.1) -> None:
        """``period_s``: the probe's sleep; its own cost is one wake-up per period."""
        self.histogram, self.clock, self.period_s = histogram, clock, period_s
        self.recent: list[float] = []
        self.worst = 0.0

    def observe(self, lag: float) -> None:
        """Record one lag (seconds, negative clamped to 0)."""
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        self.worst = max(self.worst, lag)
        self.recent.append(lag)
        if len(self.recent) > 2 * KEEP:
            del self.recent[:KEEP]

    async def loop(self, sleep: Callable[[float], object] = asyncio.sleep) -> None:
        """Probe until cancelled."""
        while True:
            t0 = self.clock.monotonic()
            await sleep(self.period_s)  # type: ignore[misc]
            self.observe(self.clock.monotonic() - t0 - self.period_s)

    def quantiles(self) -> dict[str, float]:
        """Median, 99th percentile and worst lag so far, in seconds (empty before the first sample)."""
        if not self.recent:
            return {}
        xs = sorted(self.recent[-KEEP:])

        def q(p: float) -> float:
            return round(xs[round(p * (len(xs) - 1))], 4)

        return {"p50": q(0.5), "p99": q(0.99), "max": round(self.worst, 4), "samples": len(xs)}
