"""Health of one daemon as its operator means it: is it training *with* the swarm?

Pure functions (plus a tiny thread-safe round log) so the rules are unit-tested without processes.
``peerd status``, ``/healthz`` and ``peerd swarm``'s progress display all read the result of
:func:`assess` from the daemon's status JSON.

States:

- ``starting``: not yet synced and training.
- ``unhealthy``: the worker or the p2pd child died (the daemon is about to exit).
- ``degraded``: up, but it has not committed for ``DEGRADED_AFTER`` rounds in a row while other
  peers are live (a peer that aborts every round trains alone and drifts; before this state
  existed such a peer reported ``healthy: yes`` for 79 aborted rounds).
- ``healthy``: otherwise (a lone peer skips rounds; that is not a fault).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

DEGRADED_AFTER = 5  # rounds without a commit (aborted ones) while others are live
RATE_WINDOW_S = 30.0  # rounds come in bursts once per round_s: a 1 s window reads 0 most of the time
RECENT_ROUNDS = 8  # outcomes kept for status (the swarm launcher shows them on a timeout)


@dataclass
class RoundLog:
    """Outcomes of this peer's recent rounds, written by the loop thread, read by the admin thread."""

    aborted_in_a_row: int = 0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ROUNDS))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, outcome: str, reason: str) -> None:
        """Record one round's outcome (``committed``, ``aborted`` or ``skipped``) and its reason."""
        with self._lock:
            if outcome == "committed":
                self.aborted_in_a_row = 0
            elif outcome == "aborted":
                self.aborted_in_a_row += 1
            self.recent.append(outcome if outcome == "committed" else f"{outcome}:{reason}")

    def snapshot(self) -> tuple[int, list[str]]:
        """(aborted rounds since the last commit, recent outcomes oldest first)."""
        with self._lock:
            return self.aborted_in_a_row, list(self.recent)


@dataclass(frozen=True)
class Health:
    """The verdict: a state, whether it counts as healthy, and why not."""

    state: str
    reasons: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        """Only ``healthy`` is healthy: probes and ``/healthz`` fail on anything else."""
        return self.state == "healthy"


def assess(*, ready: bool, worker_ok: bool, p2pd_ok: bool, others_live: int, aborted_in_a_row: int,
           last_reason: str | None = None, degraded_after: int = DEGRADED_AFTER) -> Health:
    """Health from the facts a daemon knows about itself and the swarm it sees.

    Args:
        ready: synced and training.
        worker_ok: the training thread is alive and has not failed.
        p2pd_ok: the DHT's p2pd child is alive.
        others_live: peers of this run in this peer's view (itself excluded).
        aborted_in_a_row: rounds aborted since the last commit.
        last_reason: the last round's reason, quoted in the degraded reason.
        degraded_after: rounds without a commit that make a peer with live company degraded.
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
    if others_live > 0 and aborted_in_a_row >= degraded_after:
        why = f" (last: {last_reason})" if last_reason else ""
        peers = "peer is" if others_live == 1 else "peers are"
        return Health("degraded", (f"no commit in the last {aborted_in_a_row} rounds{why} while "
                                   f"{others_live} other {peers} live",))
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


def status_fields(daemon: Any) -> dict[str, Any]:
    """Health, rates and recent rounds for a daemon's status snapshot (read from the admin thread)."""
    import time

    worker, membership = daemon.worker, daemon.membership
    in_a_row, recent = daemon.round_log.snapshot()
    verdict = assess(
        ready=daemon.ready, worker_ok=worker is None or (worker.alive and worker.error is None) or not daemon.ready,
        p2pd_ok=membership is None or membership.node is None or membership.p2pd_alive(),
        others_live=len(daemon.view), aborted_in_a_row=in_a_row,
        last_reason=(daemon.last_round or {}).get("reason"))
    now_s = time.monotonic() - daemon.started_at
    return {"healthy": verdict.healthy, "health": verdict.state, "health_reasons": list(verdict.reasons),
            "aborted_in_a_row": in_a_row, "recent_rounds": recent,
            **window_rates(list(daemon.history), now_s, daemon.counters.tx_bytes, daemon.counters.rx_bytes)}
