"""Bridge: the one hand-off point between the loop thread and the torch worker thread.

The loop never touches the model; the worker never touches the network. The loop submits small
commands (snapshot a fragment, merge a committed fragment, install synced state, evaluate); the
worker executes them at its next step boundary and resolves a ``concurrent.futures.Future``
that the loop awaits with a timeout. Tensors crossing the bridge are fresh CPU copies, so neither
side can mutate what the other holds. The queue is bounded: a stuck worker makes submissions
fail fast (``BridgeFull``) instead of piling up memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch


class BridgeFull(RuntimeError):
    """The worker is not draining commands."""


@dataclass(frozen=True)
class Snapshot:
    """A fragment's worker parameters at one step boundary, plus the samples behind them."""

    token: int
    fragment: int
    theta: torch.Tensor  # flat fp32 CPU copy
    samples: int  # samples trained since this fragment's last committed merge
    step: int
    steps: int = 0  # inner steps trained since this fragment's last committed merge (DiLoCo's H when merged)


@dataclass(frozen=True)
class Command:
    """One request to the worker."""

    kind: str  # snapshot | merge | rebase | discard | install | evaluate | finalize | checkpoint
    args: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass(frozen=True)
class WorkerStats:
    """Published by the worker after every step; replaced whole, so reads are consistent."""

    step: int = 0
    samples: int = 0
    loss: float = float("nan")
    samples_per_s: float = 0.0
    busy_s: float = 0.0  # seconds spent in training steps
    done: bool = False  # reached train.max_steps
    steps_per_s: float = 0.0
    steps_since: tuple[int, ...] = ()  # per fragment: inner steps since its last committed merge (pacing)


class Bridge:
    """Bounded command queue plus the worker's latest stats."""

    def __init__(self, maxsize: int = 64) -> None:
        """Create an empty bridge."""
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=maxsize)
        self.stats = WorkerStats()
        self._token = 0
        self._merging: dict[int, tuple[Future[Any], int]] = {}  # fragment -> (queued merge, steps it carries)

    def merging(self, fragment: int, steps: int, future: Future[Any]) -> None:
        """Note a committed merge queued for the worker (loop thread), until the worker has applied it."""
        self._merging[fragment] = (future, steps)

    def announced_stats(self) -> WorkerStats:
        """The worker's stats with its per-fragment step counts less merges queued but not yet applied.

        A slow worker applies a merge at its next step boundary, possibly after the next round's
        heartbeat; announcing the count from before the merge would make the fragment look due
        again and sync it twice in a row (work pacing). The queued merges are read before the
        stats: a merge that completes in between is subtracted twice, which clamps at zero and
        errs towards holding a round, never towards a useless sync.
        """
        pending = {}
        for f, (fut, steps) in list(self._merging.items()):
            if fut.done():
                del self._merging[f]
            else:
                pending[f] = steps
        stats = self.stats
        if not pending:
            return stats
        since = tuple(max(0, n - pending.get(f, 0)) for f, n in enumerate(stats.steps_since))
        return dataclasses.replace(stats, steps_since=since)

    def submit(self, kind: str, **args: Any) -> Future[Any]:
        """Queue a command for the worker (thread-safe)."""
        if kind == "snapshot":
            self._token += 1
            args["token"] = self._token
        cmd = Command(kind, args)
        try:
            self.commands.put_nowait(cmd)
        except queue.Full:
            raise BridgeFull("worker is not draining the bridge") from None
        return cmd.future

    async def call(self, kind: str, timeout_s: float, **args: Any) -> Any:
        """Submit and await the result on the loop, bounded by ``timeout_s``.

        Raises:
            asyncio.TimeoutError: the worker did not answer in time (the command may still run).
        """
        fut = self.submit(kind, **args)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
