"""Persistence of a daemon: checkpoints (periodic, on leave, restore at start) and the summary.

A mixin of :class:`peerd.daemon.Daemon`; file formats and atomic writes live in
:mod:`peerd.checkpoint`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from peerd import checkpoint
from peerd.errors import EXIT_CONFIG, FatalError
from peerd.log import get_logger

log = get_logger("peerd.persist")


class PersistMixin:
    """Checkpoint save/restore and the run summary file."""

    def _restore(self, ckpt_dir: Path) -> None:
        """Resume from the newest checkpoint that verifies; the swarm resync follows as usual."""
        assert self.state is not None and self.worker is not None and self.diloco is not None
        loaded, problems = checkpoint.load_latest(ckpt_dir)
        for problem in problems:
            log.warning("checkpoint_skipped", problem=problem)
        if loaded is None:
            if problems:
                log.warning("checkpoint_none_usable", dir=str(ckpt_dir),
                            fix="starting fresh; state resyncs from the swarm")
            return
        c = loaded.content
        layout = self.state.layout
        theta, mom = c["outer"]["theta"], c["outer"]["momentum"]
        if c.get("run_id") != self.cfg.run_id or [t.numel() for t in theta] != list(layout.numels):
            raise FatalError(f"checkpoint {loaded.path}: made for another run or model "
                             f"(run_id {c.get('run_id')!r}); use another checkpoint.dir", EXIT_CONFIG)
        try:
            self.worker.restore(c["worker"])
        except ValueError as exc:
            raise FatalError(f"checkpoint {loaded.path}: {exc}", EXIT_CONFIG) from exc
        self.state.install(int(c["outer"]["revision"]), dict(enumerate(theta)), dict(enumerate(mom)))
        self.diloco.residuals = [r.clone() for r in c["residuals"]]
        self.counters.rounds_committed = int(c["counters"]["rounds_committed"])
        self.counters.rounds_aborted = int(c["counters"]["rounds_aborted"])
        self.metrics.revision.set(self.state.revision)
        log.info("checkpoint_loaded", path=str(loaded.path), revision=self.state.revision,
                 step=self.bridge.stats.step)

    async def _save_checkpoint(self) -> None:
        """Snapshot worker and outer state consistently enough to resume, then write atomically."""
        if not self.cfg.checkpoint.dir or self.state is None or self.diloco is None:
            return
        async with self.diloco.commit_lock:
            snap = self.state.snapshot()
            residuals = [r.clone() for r in self.diloco.residuals]
            pending = self.bridge.submit("checkpoint")  # queued after any merge of a commit
        worker_state = await asyncio.wait_for(asyncio.wrap_future(pending), 60)
        content = {
            "run_id": self.cfg.run_id, "peer_id": self.peer_id,
            "outer": {"revision": snap.revision, "theta": [snap.theta[f] for f in range(len(snap.theta))],
                      "momentum": [snap.momentum[f] for f in range(len(snap.momentum))]},
            "residuals": residuals, "worker": worker_state,
            "counters": {"rounds_committed": self.counters.rounds_committed,
                         "rounds_aborted": self.counters.rounds_aborted},
        }
        path = await asyncio.to_thread(checkpoint.save, Path(self.cfg.checkpoint.dir), content)
        log.info("checkpoint_saved", path=str(path), revision=snap.revision, step=worker_state["step"])

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.checkpoint.every_s)
            try:
                await self._save_checkpoint()
            except (TimeoutError, OSError) as exc:
                log.warning("checkpoint_failed", error=repr(exc))

    def _write_summary(self, final_loss: float) -> None:
        if not self.summary_path:
            return
        doc = {"run_id": self.cfg.run_id, "mode": self.cfg.mixing.mode,
               "wall_s": round(time.monotonic() - self.started_at, 3), "peers": [self.summary(final_loss)]}
        tmp = Path(self.summary_path + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.summary_path)
