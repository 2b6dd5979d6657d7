"""Health of one daemon as its operator means it: is it training *with* the swarm?

Pure functions (plus a tiny thread-safe round log) so the rules are unit-tested without processes.
``peerd status``, ``/healthz`` and ``peerd swarm``'s progress display all read the result of
:func:`assess` from the daemon's status JSON.

States:

- ``starting``: not yet synced and training.
- ``unhealthy``: the worker or the p2pd child died (the daemon is about to exit).
- ``degraded``: up, but it has not committed for ``DEGRADED_AFTER`` rounds in a row (aborted or
  skipped) while other peers are in its view: it trains alone and drifts (before this state
  existed such a peer reported ``healthy: yes`` for 79 aborted rounds). A lone peer skips rounds
  for want of company; that is not a fault.
- ``healthy``: otherwise (a lone peer skips rounds; that is not a fault).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

DEGRADED_AFTER = 5  # rounds without a commit while others are in the view
RATE_WINDOW_S = 30.0  # rounds come in bursts once per round_s: a 1 s window reads 0 most of the time
RECENT_ROUNDS = 8  # outcomes kept for status (the swarm launcher shows them on a timeout)


@dataclass
class RoundLog:
    """Outcomes of this peer's recent rounds, written by the loop thread, read by the admin thread."""

    aborted: int = 0  # since the last commit
    skipped: int = 0  # since the last commit
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ROUNDS))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, outcome: str, reason: str) -> None:
        """Record one round's outcome (``committed``, ``aborted`` or ``skipped``) and its reason."""
        with self._lock:
            if outcome == "committed":
                self.aborted = self.skipped = 0
            elif outcome == "aborted":
                self.aborted += 1
            elif outcome == "held":  # work pacing: nothing was due, the plan said so; not a missed round
                pass
            else:
                self.skipped += 1
            self.recent.append(outcome if outcome == "committed" else f"{outcome}:{reason}")

    def snapshot(self) -> tuple[int, int, list[str]]:
        """(aborted, skipped rounds since the last commit, recent outcomes oldest first)."""
        with self._lock:
            return self.aborted, self.skipped, list(self.recent)


@dataclass(frozen=True)
class Health:
    """The verdict: a state, whether it counts as healthy, and why not."""

    state: str
    reasons: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        """Only ``healthy`` is healthy: probes and ``/healthz`` fail on anything else."""
        return self.state == "healthy"


def assess(*, ready: bool, worker_ok: bool, p2pd_ok: bool, others_live: int, aborted: int, skipped: int = 0,
           last_round: str | None = None, degraded_after: int = DEGRADED_AFTER) -> Health:
    """Health from the facts a daemon knows about itself and the swarm it sees.

    Args:
        ready: synced and training.
        worker_ok: the training thread is alive and has not failed.
        p2pd_ok: the DHT's p2pd child is alive.
        others_live: peers of this run in this peer's view (itself excluded).
        aborted: rounds aborted since the last commit.
        skipped: rounds skipped since the last commit.
        last_round: the last round's outcome and reason, quoted in the degraded reason.
        degraded_after: rounds without a commit that make a peer with company degraded.
    """
    reasons = []
    if not worker_ok:
        reasons.append("training worker stopped")
    if not p2pd_ok:
        reasons.append("p2pd (DHT) process died")
    if reasons:
        return Health("unhealthy", tuple(reasons))
    if not ready:
        return Health("starting", ("syncing with the swarm",))
    missed = aborted + skipped
    if others_live > 0 and missed >= degraded_after:
        last = f"; last: {last_round}" if last_round else ""
        peers = "peer" if others_live == 1 else "peers"
        return Health("degraded", (f"no commit in the last {missed} rounds ({aborted} aborted, {skipped} skipped"
                                   f"{last}) while the swarm has {others_live} other {peers}",))
    return Health("healthy")


def window_rates(history: list[dict[str, Any]], now_s: float, tx: int, rx: int,
                 window_s: float = RATE_WINDOW_S) -> dict[str, float]:
    """tx/rx bytes per second over the last ``window_s`` (or since the first sample, if younger).

    ``history`` holds samples ``{"t_s", "tx_bytes", "rx_bytes"}`` in time order (the daemon's
    run history); ``now_s`` and the current totals ``tx``/``rx`` close the window.
    """
    base = None
    for item in reversed(history):
        if not isinstance(item.get("t_s"), (int, float)):
            continue
        base = item
        if now_s - item["t_s"] >= window_s:
            break
    if base is None or now_s - base["t_s"] <= 0:
        return {"tx_bytes_per_s": 0.0, "rx_bytes_per_s": 0.0}
    span = now_s - base["t_s"]
    return {"tx_bytes_per_s": round(max(0, tx - base["tx_bytes"]) / span, 1),
            "rx_bytes_per_s": round(max(0, rx - base["rx_bytes"]) / span, 1)}


def status_fields(t: Any) -> dict[str, Any]:
    """Health, rates and recent rounds for a daemon's status snapshot (read from the admin thread).

    ``t`` is the daemon's :class:`peerd.node.telemetry.Telemetry`; its node, worker and
    membership are None until they have started.
    """
    import time

    node, worker, membership = t.node, t.worker, t.membership
    ready = node is not None and node.view.ready
    aborted, skipped, recent = node.driver.round_log.snapshot() if node is not None else (0, 0, [])
    last = node.driver.last_round if node is not None else {}
    verdict = assess(
        ready=ready, worker_ok=worker is None or (worker.alive and worker.error is None) or not ready,
        p2pd_ok=membership is None or membership.node is None or membership.p2pd_alive(),
        others_live=len(node.view.records) if node is not None else 0, aborted=aborted, skipped=skipped,
        last_round=f"{last.get('outcome')} {last.get('reason')}" if last else None)
    now_s = time.monotonic() - t.started_at
    return {"healthy": verdict.healthy, "health": verdict.state, "health_reasons": list(verdict.reasons),
            "rounds_without_commit": aborted + skipped, "recent_rounds": recent,
            **({"pace": node.driver.pacing.status()} if node is not None and node.cfg.pace_h else {}),
            **window_rates(list(t.history), now_s, t.counters.tx_bytes, t.counters.rx_bytes)}
