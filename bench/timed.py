"""Training for a wall-clock budget, with the eval loss curve taken off the clock.

The equal-wall-time race (``bench.wan_race``) gives every method the same seconds of training.
A baseline worker copies its model's parameters every ``every_s`` seconds (a copy of ~1 MB is
microseconds; an evaluation is ~80 ms and, inside DDP, would stall every rank) and evaluates the
copies after the budget is spent, so the curve costs the training nothing.
"""

from __future__ import annotations

import time
from typing import Any


class TimedSnapshots:
    """Parameter copies at ``every_s`` intervals from ``t0``, evaluated after training."""

    def __init__(self, model: Any, every_s: float, t0: float | None = None) -> None:
        """``model``: the torch module whose parameters are copied; ``t0``: the budget's start."""
        self.model, self.every_s = model, every_s
        self.t0 = time.monotonic() if t0 is None else t0
        self._next = every_s
        self.snaps: list[tuple[float, int, dict[str, Any]]] = []

    def elapsed(self) -> float:
        """Seconds since the start of the budget."""
        return time.monotonic() - self.t0

    def maybe_take(self, step: int) -> None:
        """Copy the parameters when the next mark has passed (call once per step)."""
        t = self.elapsed()
        if t >= self._next:
            self.take(step, t)
            while self._next <= t:
                self._next += self.every_s

    def take(self, step: int, t: float | None = None) -> None:
        """Copy the parameters now (the final point is taken explicitly at the end)."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.snaps.append((self.elapsed() if t is None else t, step, state))

    def evaluate(self, task: Any) -> list[dict[str, Any]]:
        """Eval loss of every copy, in order; restores the model's own parameters afterwards."""
        import torch

        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        curve = []
        with torch.no_grad():
            for t, step, state in self.snaps:
                self.model.load_state_dict(state)
                curve.append({"t_s": round(t, 2), "step": step, "eval_loss": float(task.evaluate(self.model))})
        self.model.load_state_dict(own)
        return curve


def mean_curves(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Point k is the mean of every curve's point k (time, step, loss), up to the shortest curve.

    Peers of one method evaluate at the same marks (seconds, or steps for peerd), so the k-th
    points belong together; their times differ by the peers' skew.
    """
    n, k = min((len(c) for c in curves), default=0), len(curves)
    return [{"t_s": round(sum(c[i]["t_s"] for c in curves) / k, 2),
             "step": round(sum(c[i]["step"] for c in curves) / k),
             "eval_loss": sum(c[i]["eval_loss"] for c in curves) / k} for i in range(n)]
