"""Leaving: the bounded graceful shutdown of a daemon (SIGTERM/SIGINT, fatal error or done).

A mixin of :class:`peerd.daemon.Daemon`: announce departure, checkpoint, final evaluation,
summary, then stop the servers and the DHT node, every step with its own time limit.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import threading
import time

from peerd.aio import bounded
from peerd.errors import EXIT_ERROR
from peerd.log import get_logger

log = get_logger("peerd.leave")

# Hard bound on a graceful leave (the final evaluation included) before the process is ended.
LEAVE_TIMEOUT_S = 120.0


def _leave_watchdog(timeout_s: float) -> None:
    time.sleep(timeout_s)  # a daemon thread: it dies with the process when the leave finishes
    log.error("leave_timeout", seconds=timeout_s, action="exiting with stacks on stderr")
    faulthandler.dump_traceback(all_threads=True)
    os._exit(EXIT_ERROR)


class LeaveMixin:
    """Graceful, bounded leave."""

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

    async def _shutdown(self) -> None:
        log.info("leaving", reason=self.exit_reason, waits_for="final evaluation, checkpoint and summary, then "
                 "closing gRPC and the DHT (each step time-limited)")
        final_loss = float("nan")
        if self.membership is not None and self.membership.node is not None and self.state is not None and self.peer_id:
            # Announce departure: a record that is not ready and expires almost at once.
            await self.membership.heartbeat(self._my_record(ready=False), ttl_s=0.5)
        if self.worker is not None and self.worker.alive and self.state is not None:
            if self.gossip is not None:
                await self._gossip_leave()
            try:  # before finalize, which replaces the worker's parameters with the outer ones
                await self._save_checkpoint()
            except Exception as exc:  # noqa: BLE001 - leaving must not fail on a full disk
                log.warning("checkpoint_failed", error=repr(exc))
            try:
                # gossip: no shared outer state; a peer's own worker (merged) is its model
                if self.state.revision > 0 and self.gossip is None:
                    snap = self.state.snapshot()
                    final_loss = await self.bridge.call("finalize", 60, fragments=dict(snap.theta))
                else:
                    final_loss = await self.bridge.call("evaluate", 60)
                self.metrics.eval_loss.set(final_loss)
            except Exception as exc:  # noqa: BLE001 - summary still gets written
                log.warning("final_eval_failed", error=repr(exc))
            if not await asyncio.to_thread(self.worker.stop, 30):
                log.warning("worker_stop_timeout")
        self._record_history(final_loss)
        self._write_summary(final_loss)
        if self.admin is not None:
            self.admin.stop()
        if self.transport is not None:
            try:
                await bounded(self.transport.stop(grace_s=1.0), 10)
            except TimeoutError:
                log.warning("transport_stop_timeout")
        if self.membership is not None:
            await self.membership.shutdown()
        self.metrics.stop()
        log.info("stopped", reason=self.exit_reason, exit_code=self.exit_code)
