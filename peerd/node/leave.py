"""Leaving: the bounded graceful shutdown of a daemon (SIGTERM/SIGINT, fatal error or done).

Owns what a leave needs of whatever had started: announce departure, hand over (gossip mass),
checkpoint, final evaluation, summary, then stop the servers and the DHT node, every step with
its own time limit. A watchdog thread bounds the whole leave in case the event loop itself blocks.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import threading
import time
from typing import TYPE_CHECKING

from peerd.core.aio import bounded
from peerd.core.bridge import Bridge
from peerd.core.errors import EXIT_ERROR, EXIT_OK
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.net.membership import Membership
from peerd.net.transport import Transport
from peerd.node.admin import AdminServer
from peerd.train.worker import Worker

if TYPE_CHECKING:
    from peerd.node.checkpointer import Checkpointer
    from peerd.node.peer import PeerNode
    from peerd.node.telemetry import Telemetry

log = get_logger("peerd.leave")

# Hard bound on a graceful leave (the final evaluation included) before the process is ended.
LEAVE_TIMEOUT_S = 120.0


def _leave_watchdog(timeout_s: float) -> None:
    time.sleep(timeout_s)  # a daemon thread: it dies with the process when the leave finishes
    log.error("leave_timeout", seconds=timeout_s, action="exiting with stacks on stderr")
    faulthandler.dump_traceback(all_threads=True)
    os._exit(EXIT_ERROR)


class Leaver:
    """Graceful, bounded leave of whatever part of the daemon had started."""

    def __init__(self, metrics: Metrics, bridge: Bridge) -> None:
        """Parts register as they start (a failed start leaves the rest unset)."""
        self.metrics, self.bridge = metrics, bridge
        self.stop_event = asyncio.Event()
        self.exit_code, self.exit_reason = EXIT_OK, "ok"
        self.metrics_started = False
        self.admin: AdminServer | None = None
        self.membership: Membership | None = None
        self.transport: Transport | None = None
        self.node: PeerNode | None = None
        self.worker: Worker | None = None
        self.checkpointer: Checkpointer | None = None

    def attach(self, node: PeerNode, worker: Worker, checkpointer: Checkpointer | None) -> None:
        """The peer's protocol side, worker and checkpointer exist from here on."""
        self.node, self.worker, self.checkpointer = node, worker, checkpointer

    def fail(self, code: int, reason: str) -> None:
        """A fatal error: exit with ``code``."""
        self.exit_code, self.exit_reason = code, reason

    def request_stop(self, reason: str = "signal") -> None:
        """Ask for a graceful leave (signal handlers call this).

        The leave is bounded twice: every shutdown step has its own timeout, and a watchdog
        thread ends the process after ``LEAVE_TIMEOUT_S`` with every thread's stack on stderr,
        in case something blocks the event loop itself.
        """
        if not self.stop_event.is_set():
            self.exit_reason = reason
            self.stop_event.set()
            threading.Thread(target=_leave_watchdog, args=(LEAVE_TIMEOUT_S,), name="peerd-leave-watchdog",
                             daemon=True).start()

    async def shutdown(self, telemetry: Telemetry) -> None:
        """Leave the swarm, write checkpoint and summary, stop every server (each step bounded)."""
        log.info("leaving", reason=self.exit_reason, waits_for="final evaluation, checkpoint and summary, then "
                 "closing gRPC and the DHT (each step time-limited)")
        final_loss = float("nan")
        node, worker = self.node, self.worker
        if node is not None and self.membership is not None and self.membership.node is not None:
            try:
                await bounded(node.leave(swarm_finishing=self.exit_reason == "done"), 30)
            except TimeoutError:
                log.warning("leave_timeout", step="announce_and_hand_over")
        if node is not None and worker is not None and worker.alive:
            if self.checkpointer is not None:
                try:  # before finalize, which replaces the worker's parameters with the outer ones
                    await self.checkpointer.save()
                except Exception as exc:  # noqa: BLE001 - leaving must not fail on a full disk
                    log.warning("checkpoint_failed", error=repr(exc))
            try:
                # gossip: no shared outer state; a peer's own worker (merged) is its model
                if node.state.revision > 0 and node.mixer.shared_state:
                    snap = node.state.snapshot()
                    final_loss = await self.bridge.call("finalize", 60, fragments=dict(snap.theta))
                else:
                    final_loss = await self.bridge.call("evaluate", 60)
                self.metrics.eval_loss.set(final_loss)
            except Exception as exc:  # noqa: BLE001 - summary still gets written
                log.warning("final_eval_failed", error=repr(exc))
            if not await asyncio.to_thread(worker.stop, 30):
                log.warning("worker_stop_timeout")
        telemetry.record_history(final_loss)
        telemetry.write_summary(final_loss, self.exit_code, self.exit_reason)
        if self.admin is not None:
            self.admin.stop()
        if self.transport is not None:
            try:
                await bounded(self.transport.stop(grace_s=1.0), 10)
            except TimeoutError:
                log.warning("transport_stop_timeout")
        if self.membership is not None:
            await self.membership.shutdown()
        if self.metrics_started:
            self.metrics.stop()
        log.info("stopped", reason=self.exit_reason, exit_code=self.exit_code)
