"""Telemetry of a daemon: counters from the lower layers, status for the admin endpoint, summary.

The one owner of what an operator reads: the worker's step and eval hooks, byte counts from the
transport, the periodic status log line, ``peerd status`` fields and the run summary JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peerd.core.bridge import Bridge
from peerd.core.config import PeerdConfig
from peerd.core.errors import EXIT_OK, Counters
from peerd.core.fragments import state_hash
from peerd.core.log import get_logger
from peerd.core.looplag import LoopLag
from peerd.core.metrics import Metrics
from peerd.net.membership import Membership
from peerd.node import health
from peerd.train.worker import Worker

if TYPE_CHECKING:
    from peerd.node.peer import PeerNode

log = get_logger("peerd.daemon")


class Telemetry:
    """Counters, history, status and summary of one daemon."""

    def __init__(self, cfg: PeerdConfig, bridge: Bridge, counters: Counters, metrics: Metrics,
                 summary_path: str | None) -> None:
        """The node, worker and membership are attached once they exist (status reads them)."""
        self.cfg, self.bridge, self.counters, self.metrics = cfg, bridge, counters, metrics
        self.summary_path = summary_path
        self.started_at = time.monotonic()
        self.metrics_port = 0
        self.history: list[dict[str, Any]] = []
        self.node: PeerNode | None = None
        self.worker: Worker | None = None
        self.membership: Membership | None = None
        self.endpoint = ""
        self.lag = LoopLag(metrics.loop_lag)  # its loop runs with the daemon's (see Daemon._serve)

    def attach(self, node: PeerNode, worker: Worker, membership: Membership, endpoint: str) -> None:
        """Parts whose state ``status()`` reports."""
        self.node, self.worker, self.membership, self.endpoint = node, worker, membership, endpoint

    # ---- hooks for lower layers ----

    def on_bytes(self, direction: str, n: int) -> None:
        """Transport byte counts."""
        self.metrics.fragment_bytes.labels(direction=direction).inc(n)
        if direction == "tx":
            self.counters.tx_bytes += n
        else:
            self.counters.rx_bytes += n

    def on_step(self, dt: float, loss: float, samples: int) -> None:
        """Worker thread, after every step."""
        self.metrics.train_steps.inc()
        self.metrics.train_samples.inc(samples)
        self.metrics.train_loss.set(loss)
        self.metrics.step_duration.observe(dt)
        wall = time.monotonic() - self.started_at
        self.metrics.utilization.set(min(1.0, self.bridge.stats.busy_s / max(wall, 1e-9)))

    def on_eval(self, loss: float) -> None:
        """Worker thread: gauge and an append, both thread-safe."""
        self.metrics.eval_loss.set(loss)
        self.record_history(loss)

    def record_history(self, eval_loss: float | None = None) -> None:
        """Append one point of the run's history (summary ``history``)."""
        s = self.bridge.stats
        self.history.append({"t_s": round(time.monotonic() - self.started_at, 3), "step": s.step,
                             "train_loss": s.loss if math.isfinite(s.loss) else None,
                             "eval_loss": eval_loss if eval_loss is not None and math.isfinite(eval_loss) else None,
                             "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes})

    # ---- status ----

    def status(self) -> dict[str, Any]:
        """Snapshot for the admin endpoint (read from the admin thread; values only, no secrets)."""
        s, node = self.bridge.stats, self.node
        ready = node is not None and node.view.ready
        proto = node.status() if node is not None else {"swarm_size": 1, "last_round": {}, "revision": 0,
                                                         "state_hash": None}
        return {
            "peer_id": node.peer_id if node else "", "run_id": self.cfg.run_id, "mode": self.cfg.mixing.mode,
            "grpc": self.endpoint, "metrics": f"{self.cfg.metrics.host}:{self.metrics_port}",
            "ready": ready, "uptime_s": round(time.monotonic() - self.started_at, 1),
            "swarm_size": proto["swarm_size"], "step": s.step, "samples": s.samples,
            "loss": s.loss if math.isfinite(s.loss) else None, "samples_per_s": round(s.samples_per_s, 2),
            "done": s.done, "last_round": proto["last_round"],
            "rounds_committed": self.counters.rounds_committed, "rounds_aborted": self.counters.rounds_aborted,
            "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes,
            "revision": proto["revision"], "state_hash": proto["state_hash"],
            "mass_weights": proto.get("mass_weights"),  # gossip push-sum weights
            "reachability": proto.get("reachability"),
            # server / client and how it was decided (net/reach.py); diloco: rounds including each member's work
            "contributions": proto.get("contributions"),
            **health.status_fields(self),  # healthy/health/reasons, windowed tx/rx rates, recent rounds
        }

    async def status_loop(self) -> None:
        """Log a status line every ``train.log_every_s`` and keep the tx/rx rates."""
        self.record_history(self.worker.initial_eval_loss if self.worker else None)
        while True:
            await asyncio.sleep(self.cfg.train.log_every_s)
            self.record_history()
            s, node = self.bridge.stats, self.node
            log.info("status", step=s.step, loss=round(s.loss, 4),
                     peers=len(node.view.records) + 1 if node else 1,
                     revision=node.state.revision if node else 0,
                     committed=self.counters.rounds_committed, aborted=self.counters.rounds_aborted,
                     tx_bytes=self.counters.tx_bytes, rx_bytes=self.counters.rx_bytes,
                     last_round=node.driver.last_round.get("outcome") if node else None)

    # ---- summary ----

    def summary(self, final_loss: float, exit_code: int, exit_reason: str) -> dict[str, Any]:
        """This peer's entry of the run summary; NaN losses become null."""
        stats, node = self.bridge.stats, self.node
        initial = self.worker.initial_eval_loss if self.worker else float("nan")
        return {
            "peer_id": node.peer_id if node else "", "steps": stats.step, "samples": stats.samples,
            "initial_eval_loss": initial if math.isfinite(initial) else None,
            "final_eval_loss": final_loss if math.isfinite(final_loss) else None,
            "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes,
            "rounds_committed": self.counters.rounds_committed, "rounds_aborted": self.counters.rounds_aborted,
            "rounds_by_outcome": dict(sorted(self.counters.round_outcomes.items())),
            "revision": node.state.revision if node else 0,
            "state_hash": node.state.state_hash() if node else state_hash(0, []),
            "exit": exit_reason if exit_code == EXIT_OK else f"error: {exit_reason}",
            "recoveries_s": self.counters.recoveries_s, "syncs": self.counters.syncs,
            # Work pacing: rounds held (nothing due), DiLoCo's H per committed merge (fragment, steps), idling
            "rounds_held": self.counters.rounds_held,
            "sync_h": [list(x) for x in self.worker.synced_h] if self.worker else [],
            "paced_idle_s": round(self.worker.paced_idle_s, 3) if self.worker else 0.0,
            "loop_lag_s": self.lag.quantiles(),
            "dht_ops": dict(sorted(self.counters.dht_ops.items())),
            "history": self.history,
        }

    def write_summary(self, final_loss: float, exit_code: int, exit_reason: str) -> None:
        """Write the summary file atomically (``--summary``)."""
        if not self.summary_path:
            return
        doc = {"run_id": self.cfg.run_id, "mode": self.cfg.mixing.mode,
               "wall_s": round(time.monotonic() - self.started_at, 3),
               "peers": [self.summary(final_loss, exit_code, exit_reason)]}
        tmp = Path(self.summary_path + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.summary_path)
