"""Worker: the torch thread that trains continuously and serves bridge commands between steps.

It never waits for the network. Merging a committed fragment keeps the progress made while the
round was in flight: ``theta <- theta_outer_new + (theta_now - theta_at_snapshot)``, i.e. the
local steps taken after the snapshot are replayed on top of the new outer parameters instead of
being discarded (the merge is exact for everything but AdamW's moment estimates).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from peerd.core.bridge import Bridge, Command, Snapshot, WorkerStats
from peerd.core.clock import SYSTEM, Clock
from peerd.core.fragments import FragmentLayout
from peerd.train.tasks.base import Task

MAX_SNAPSHOTS = 4


class Worker:
    """Owns the model and the inner optimizer; runs in its own thread."""

    def __init__(
        self,
        task: Task,
        layout: FragmentLayout,
        bridge: Bridge,
        max_steps: int,
        threads: int,
        on_step: Callable[[float, float, int], None],
        eval_every_steps: int = 0,
        on_eval: Callable[[float], None] | None = None,
        pace: tuple[int, float] = (0, 1.0),
        clock: Clock = SYSTEM,
        nice: int = 0,
    ) -> None:
        """``on_step(duration_s, loss, samples)`` after every step; ``on_eval(loss)`` after periodic evals.

        ``pace = (steps, round_s)``: at most ``steps`` inner steps per wall-clock round (0: no limit);
        the legacy ``train.max_steps_per_round``, which idles the worker. Work-paced rounds
        (``round.target_h``) never idle it: they read :attr:`steps_since` from the stats instead.
        ``nice``: niceness added to this thread alone (``train.worker_nice``).
        """
        self.task = task
        self.layout = layout
        self.bridge = bridge
        self.max_steps = max_steps
        self.threads = threads
        self.on_step = on_step
        self.eval_every_steps = eval_every_steps
        self.on_eval = on_eval
        self.pace_steps, self.pace_round_s = pace
        self.clock = clock
        self.nice = nice
        self._pace_round, self._pace_steps = -1, 0
        self._t_rate, self._samples_at_rate, self._steps_at_rate = clock.monotonic(), 0, 0
        self.params = dict(task.model.named_parameters())
        self.optimizer = task.make_optimizer(task.model.parameters())
        self.samples_since = [0] * layout.num_fragments
        self.steps_since = [0] * layout.num_fragments  # per fragment, like samples_since, in inner steps
        self.synced_h: collections.deque[tuple[int, int]] = collections.deque(maxlen=1024)  # (fragment, H) merged
        self.paced_idle_s = 0.0  # time the legacy pacing kept this worker from training
        self._snapshots: dict[int, Snapshot] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peerd-worker", daemon=True)
        self.initial_eval_loss = float("nan")
        self.error: BaseException | None = None
        self.started = threading.Event()  # set once the initial evaluation is done

    def start(self) -> None:
        """Start the thread (initial evaluation first, then training)."""
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop; returns False if it did not within ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            lower_thread_priority(self.nice)
            torch.set_num_threads(self.threads)
            self.initial_eval_loss = self.task.evaluate(self.task.model)
            self.started.set()
            self._train()
        except BaseException as exc:  # noqa: BLE001 - reported to the daemon, which exits non-zero
            self.error = exc
            self.started.set()
            self._fail_pending(exc)

    def _train(self) -> None:
        while not self._stop.is_set():
            idle = self.idle()
            t0 = time.perf_counter()
            self.serve_commands(block=idle)  # blocking waits 50 ms at most
            if not idle:
                self.train_step()
            elif not self.bridge.stats.done:
                self.paced_idle_s += time.perf_counter() - t0

    def idle(self) -> bool:
        """Whether the worker has nothing to train now (done, or paced out of this round)."""
        if self.bridge.stats.done:
            return True
        if not self.pace_steps:
            return False
        r = int(self.clock.time() // self.pace_round_s)  # the same wall-clock rounds as the schedule
        if r != self._pace_round:
            self._pace_round, self._pace_steps = r, 0
        return self._pace_steps >= self.pace_steps

    def train_step(self) -> None:
        """One inner step; publishes the new stats (the simulation tier calls this directly)."""
        stats = self.bridge.stats
        self._pace_steps += 1
        t0 = time.perf_counter()
        batch = self.task.batches.next_batch()
        loss = self.task.loss(self.task.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        dt = time.perf_counter() - t0
        n = self.task.batches.samples_per_batch()
        self.samples_since = [s + n for s in self.samples_since]
        self.steps_since = [s + 1 for s in self.steps_since]
        now = self.clock.monotonic()
        rate, step_rate = stats.samples_per_s, stats.steps_per_s
        step = stats.step + 1
        if now - self._t_rate >= 2.0:
            rate = (stats.samples + n - self._samples_at_rate) / (now - self._t_rate)
            step_rate = (step - self._steps_at_rate) / (now - self._t_rate)
            self._t_rate, self._samples_at_rate, self._steps_at_rate = now, stats.samples + n, step
        self.bridge.stats = WorkerStats(
            step=step, samples=stats.samples + n, loss=value if math.isfinite(value) else stats.loss,
            samples_per_s=rate, busy_s=stats.busy_s + dt,
            done=self.max_steps > 0 and step >= self.max_steps,
            steps_per_s=step_rate, steps_since=tuple(self.steps_since),
        )
        self.on_step(dt, value, n)
        if self.eval_every_steps and step % self.eval_every_steps == 0 and self.on_eval is not None:
            self.on_eval(self.task.evaluate(self.task.model))

    def serve_commands(self, block: bool) -> None:
        """Execute queued bridge commands (at a step boundary); ``block`` waits 50 ms for the first."""
        while True:
            try:
                cmd = self.bridge.commands.get(timeout=0.05) if block else self.bridge.commands.get_nowait()
            except Exception:  # queue.Empty
                return
            block = False
            # The loop cancels the future when it stopped waiting (timeout): skip the command.
            if not cmd.future.set_running_or_notify_cancel():
                continue
            try:
                cmd.future.set_result(self._execute(cmd))
            except Exception as exc:  # noqa: BLE001 - the loop sees it through the future
                cmd.future.set_exception(exc)

    def _execute(self, cmd: Command) -> Any:
        a = cmd.args
        if cmd.kind == "snapshot":
            p = a["fragment"]
            snap = Snapshot(a["token"], p, self.layout.flatten(self.params, p), self.samples_since[p],
                            self.bridge.stats.step, self.steps_since[p])
            self._snapshots[snap.token] = snap
            # A snapshot whose round timed out before its merge/discard arrived must not leak.
            for stale in sorted(self._snapshots)[:-MAX_SNAPSHOTS]:
                del self._snapshots[stale]
            return snap
        if cmd.kind == "merge":
            snap = self._snapshots.pop(a["token"], None)
            if snap is None:
                raise ValueError(f"merge for unknown snapshot {a['token']}")
            p = snap.fragment
            progress = self.layout.flatten(self.params, p) - snap.theta
            self.layout.unflatten_into(self.params, p, a["theta"] + progress)
            self.samples_since[p] = max(0, self.samples_since[p] - snap.samples)
            self.steps_since[p] = max(0, self.steps_since[p] - snap.steps)
            self.synced_h.append((p, snap.steps))
            self._publish_since()
            return None
        if cmd.kind == "rebase":
            # A round committed without this worker's contribution: keep all of its local
            # progress, relative to the new outer parameters (its samples stay unsent).
            p = a["fragment"]
            progress = self.layout.flatten(self.params, p) - a["old"]
            self.layout.unflatten_into(self.params, p, a["new"] + progress)
            return None
        if cmd.kind == "discard":
            self._snapshots.pop(a["token"], None)
            return None
        if cmd.kind == "install":
            for p, theta in a["fragments"].items():
                self.layout.unflatten_into(self.params, p, theta)
                self.samples_since[p] = 0
                self.steps_since[p] = 0
            self._snapshots.clear()
            self._publish_since()
            return None
        if cmd.kind == "checkpoint":
            return self.export_state()
        if cmd.kind == "evaluate":
            return self.task.evaluate(self.task.model)
        if cmd.kind == "finalize":
            # End of run: adopt the shared outer parameters, then evaluate them.
            for p, theta in a["fragments"].items():
                self.layout.unflatten_into(self.params, p, theta)
            return self.task.evaluate(self.task.model)
        raise ValueError(f"unknown bridge command {cmd.kind!r}")

    def _publish_since(self) -> None:
        """Republish the stats with the current per-fragment step counts (after a merge or install)."""
        self.bridge.stats = dataclasses.replace(self.bridge.stats, steps_since=tuple(self.steps_since))

    def export_state(self) -> dict[str, Any]:
        """CPU copies of model, inner optimizer, data position and counters (for checkpoints)."""
        stats = self.bridge.stats
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.task.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "data": dict(self.task.batches.state_dict()),
            "step": stats.step, "samples": stats.samples, "busy_s": stats.busy_s,
            "samples_since": list(self.samples_since), "steps_since": list(self.steps_since),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Load :meth:`export_state` output; only before :meth:`start`.

        Raises:
            ValueError: the saved model does not fit this task (nothing half-applied to counters).
        """
        if self._thread.is_alive():
            raise RuntimeError("restore() must run before the worker starts")
        try:
            self.task.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"checkpoint does not fit the model: {exc}") from exc
        self.task.batches.load_state_dict(saved["data"])
        self.samples_since = [int(x) for x in saved["samples_since"]][: self.layout.num_fragments]
        # Checkpoints written before work pacing have no step counts: start them at zero.
        since = [int(x) for x in saved.get("steps_since", ())][: self.layout.num_fragments]
        self.steps_since = since + [0] * (self.layout.num_fragments - len(since))
        step = int(saved["step"])
        self.bridge.stats = WorkerStats(step=step, samples=int(saved["samples"]), busy_s=float(saved["busy_s"]),
                                        done=self.max_steps > 0 and step >= self.max_steps,
                                        steps_since=tuple(self.steps_since))

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                cmd = self.bridge.commands.get_nowait()
            except Exception:  # queue.Empty
                return
            if cmd.future.set_running_or_notify_cancel():
                cmd.future.set_exception(RuntimeError(f"worker died: {exc!r}"))


def lower_thread_priority(nice: int) -> bool:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread); False where it cannot.

    Threads this one starts later (torch's intra-op pool) inherit it. A failure is harmless: the
    worker then competes with the event loop as an unniced thread does.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        return False
    return True


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
