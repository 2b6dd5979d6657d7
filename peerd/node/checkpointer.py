"""Checkpointer: saves the components registered with it, consistently, and restores them.

Components are the outer state, the mixer (what it exports, e.g. DiLoCo's error-feedback
residuals), the run counters and the worker (model, inner optimizer, data position; exported on
its own thread through the bridge). A save takes the mixer's commit lock while it snapshots, so
a checkpoint never pairs a new outer state with a worker that has not merged it yet. File
format and atomic writes live in :mod:`peerd.node.checkpoint`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from peerd.core.bridge import Bridge
from peerd.core.errors import EXIT_CONFIG, Counters, FatalError
from peerd.core.log import get_logger
from peerd.core.state import OuterState
from peerd.mixing.base import Mixer
from peerd.node import checkpoint
from peerd.train.worker import Worker

log = get_logger("peerd.persist")


class Checkpointer:
    """Periodic and final checkpoints of one peer, and the restore at start."""

    def __init__(self, directory: Path, run_id: str, peer_id: str, state: OuterState, mixer: Mixer,
                 counters: Counters, worker: Worker, bridge: Bridge) -> None:
        """Register the components; nothing is read or written yet."""
        self.directory, self.run_id, self.peer_id = directory, run_id, peer_id
        self.state, self.mixer, self.counters, self.worker, self.bridge = state, mixer, counters, worker, bridge

    def restore(self) -> None:
        """Resume from the newest checkpoint that verifies (before the worker starts).

        Raises:
            FatalError: the newest usable checkpoint belongs to another run or model.
        """
        loaded, problems = checkpoint.load_latest(self.directory)
        for problem in problems:
            log.warning("checkpoint_skipped", problem=problem)
        if loaded is None:
            if problems:
                log.warning("checkpoint_none_usable", dir=str(self.directory),
                            fix="starting fresh; state resyncs from the swarm")
            return
        c = loaded.content
        theta, mom = c["outer"]["theta"], c["outer"]["momentum"]
        if c.get("run_id") != self.run_id or [t.numel() for t in theta] != list(self.state.layout.numels):
            raise FatalError(f"checkpoint {loaded.path}: made for another run or model "
                             f"(run_id {c.get('run_id')!r}); use another checkpoint.dir", EXIT_CONFIG)
        try:
            self.worker.restore(c["worker"])
        except ValueError as exc:
            raise FatalError(f"checkpoint {loaded.path}: {exc}", EXIT_CONFIG) from exc
        self.state.install(int(c["outer"]["revision"]), dict(enumerate(theta)), dict(enumerate(mom)))
        self.mixer.restore(c)
        self.counters.rounds_committed = int(c["counters"]["rounds_committed"])
        self.counters.rounds_aborted = int(c["counters"]["rounds_aborted"])
        log.info("checkpoint_loaded", path=str(loaded.path), revision=self.state.revision,
                 step=self.bridge.stats.step)

    async def save(self) -> None:
        """Snapshot every component consistently, then write atomically."""
        async with self.mixer.commit_lock:
            snap = self.state.snapshot()
            mixer_content = self.mixer.export()
            pending = self.bridge.submit("checkpoint")  # queued after any merge of a commit
        worker_state = await asyncio.wait_for(asyncio.wrap_future(pending), 60)
        content: dict[str, Any] = {
            "run_id": self.run_id, "peer_id": self.peer_id,
            "outer": {"revision": snap.revision, "theta": [snap.theta[f] for f in range(len(snap.theta))],
                      "momentum": [snap.momentum[f] for f in range(len(snap.momentum))]},
            **mixer_content, "worker": worker_state,
            "counters": {"rounds_committed": self.counters.rounds_committed,
                         "rounds_aborted": self.counters.rounds_aborted},
        }
        path = await asyncio.to_thread(checkpoint.save, self.directory, content)
        log.info("checkpoint_saved", path=str(path), revision=snap.revision, step=worker_state["step"])

    async def loop(self, every_s: float) -> None:
        """Save every ``every_s`` seconds; a failed save is logged, never fatal."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.save()
            except (TimeoutError, OSError) as exc:
                log.warning("checkpoint_failed", error=repr(exc))
