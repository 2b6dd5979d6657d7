"""Metrics: one prometheus_client registry per daemon, names ``peerd_<noun>_<unit>``.

One registry per daemon (not the global one) so several daemons can live in one test process.
No peer id in any label: each daemon is its own scrape target and ``instance`` identifies it.
Counters are thread-safe, so the worker thread and the loop update them directly.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from peerd import __version__

# `*_created` timestamps double the series count and no dashboard uses them.
disable_created_metrics()

_TRANSFER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """Every metric a daemon exports."""

    def __init__(self) -> None:
        """Create the families in a fresh registry."""
        r = self.registry = CollectorRegistry()
        self.train_steps = Counter("peerd_train_steps", "Inner training steps taken.", registry=r)
        self.train_samples = Counter("peerd_train_samples", "Training samples processed.", registry=r)
        self.train_loss = Gauge("peerd_train_loss", "Training loss of the latest step.", registry=r)
        self.step_duration = Histogram("peerd_train_step_duration_seconds", "Wall time of one inner step.",
                                       buckets=_STEP_BUCKETS, registry=r)
        self.eval_loss = Gauge("peerd_eval_loss", "Latest held-out evaluation loss.", registry=r)
        self.rounds = Counter("peerd_rounds", "Rounds by outcome and reason.", ["outcome", "reason"], registry=r)
        self.fragment_bytes = Counter("peerd_fragment_bytes", "Payload bytes of fragment transfers.",
                                      ["direction"], registry=r)
        self.transfer_duration = Histogram("peerd_round_duration_seconds", "Round exchange wall time.",
                                           buckets=_TRANSFER_BUCKETS, registry=r)
        self.transfer_duration_one = Histogram("peerd_transfer_duration_seconds",
                                               "Wall time of one outgoing fragment stream (push or state fetch).",
                                               ["kind"], buckets=_TRANSFER_BUCKETS, registry=r)
        self.rejected = Counter("peerd_rejected_streams", "Incoming streams refused, by reason.",
                                ["reason"], registry=r)
        self.rpc_refused = Counter("peerd_rpc_refused", "Calls refused by admission (swarm secret), by reason.",
                                   ["reason"], registry=r)
        self.remote_events = Counter("peerd_remote_events", "Refusals and errors caused by remote peers, by reason "
                                     "and whether a log line was written (such lines are rate-limited).",
                                     ["reason", "logged"], registry=r)
        self.peers_live = Gauge("peerd_peers_live", "Live peers in this peer's view (itself included).",
                                registry=r)
        self.revision = Gauge("peerd_revision", "Outer-state revision (committed rounds).", registry=r)
        self.hash_mismatches = Counter("peerd_hash_mismatches", "Times this peer's state hash differed "
                                       "from the majority at its revision.", registry=r)
        self.resyncs = Counter("peerd_resyncs", "State resyncs from a donor, by outcome.", ["outcome"], registry=r)
        self.sync_seconds = Gauge("peerd_sync_duration_seconds", "Duration of the latest state sync.", registry=r)
        self.recovery = Histogram("peerd_recovery_duration_seconds",
                                  "From a failure (aborted round or lost member) to the next committed round.",
                                  buckets=_TRANSFER_BUCKETS, registry=r)
        self.sync_bytes = Counter("peerd_sync_bytes", "State bytes downloaded from donors.", registry=r)
        self.dht_ops = Counter("peerd_dht_operations", "DHT operations by kind and outcome.",
                               ["op", "outcome"], registry=r)
        self.invalid_records = Counter("peerd_dht_invalid_records", "DHT records dropped by validation.",
                                       registry=r)
        self.sync_interval = Histogram("peerd_sync_interval_steps", "Inner steps this peer trained on a fragment "
                                       "between two of its committed syncs (DiLoCo's H).",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=r)
        self.pace_lag = Gauge("peerd_pace_lag_steps", "Work pacing: steps the most overdue fragment is past "
                              "round.target_h for the median member (0: on target).", registry=r)
        self.pace_behind = Gauge("peerd_pace_behind", "Work pacing: 1 while the swarm cannot sync as often as "
                                 "round.target_h asks (it then syncs every round).", registry=r)
        self.loop_lag = Histogram("peerd_event_loop_lag_seconds", "How late the daemon's event loop woke for a "
                                  "timer (a starved box slips every round phase by this much).",
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.utilization = Gauge("peerd_worker_utilization_ratio", "Time spent training / wall time.", registry=r)
        self.build = Info("peerd_build", "Build information.", registry=r)
        self.build.info({"version": __version__})
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
