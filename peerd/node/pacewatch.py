"""Work pacing on one peer: the publisher's fragment choice and how the swarm's pace compares with H.

The decision itself is pure (peerd/core/pace.py). Here it is applied to this peer's view: a plan
publisher asks :meth:`PaceWatch.choose` which fragment its plan syncs, and every peer, publisher
or not, runs :meth:`PaceWatch.observe` on the swarm each round, so that metrics (``peerd_pace_lag_steps``,
``peerd_pace_behind``), status and one log line per change say when the network cannot sync as
often as ``round.target_h`` asks (then every round syncs, the most overdue fragment first).
"""

from __future__ import annotations

from typing import Any

from peerd.core import pace
from peerd.core.clock import RoundClock
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.core.schedule import Candidate

log = get_logger("peerd.rounds")


class PaceWatch:
    """``round.target_h`` applied to this peer's view of the swarm."""

    def __init__(self, target_h: int, num_fragments: int, rounds: RoundClock, metrics: Metrics) -> None:
        """``target_h`` 0: unpaced (nothing is observed, :meth:`choose` is not called)."""
        self.target_h, self.num_fragments, self.rc, self.metrics = target_h, num_fragments, rounds, metrics
        self.decision: pace.PaceDecision | None = None  # as this peer's last view saw it

    def choose(self, r: int, members: list[Candidate], final: bool) -> int:
        """The fragment a plan for round ``r`` over ``members`` syncs, or ``pace.HOLD``."""
        return pace.decide(members, self.target_h, self.num_fragments, r, self.rc.round_s, self.rc.pace_lead(),
                           final).fragment

    def observe(self, r: int, members: list[Candidate]) -> None:
        """Export the swarm's pace at round ``r`` (metrics, status; a log line when behind starts or ends)."""
        was = self.decision is not None and self.decision.behind
        d = self.decision = pace.decide(members, self.target_h, self.num_fragments, r, self.rc.round_s,
                                        self.rc.pace_lead(), final=False)
        self.metrics.pace_lag.set(d.lag)
        self.metrics.pace_behind.set(1 if d.behind else 0)
        if d.behind != was:
            log.warning("pace_behind" if d.behind else "pace_on_target", target_h=self.target_h,
                        lag_steps=round(d.lag, 1), steps_per_round=round(d.per_round, 1),
                        why="the network cannot sync as often as target_h asks: every round syncs" if d.behind else "")

    def status(self) -> dict[str, Any]:
        """For ``peerd status``: target, whether behind, by how many steps, steps per round (median member)."""
        d = self.decision
        return {"target_h": self.target_h, "behind": bool(d and d.behind),
                "lag_steps": round(d.lag, 1) if d else None, "steps_per_round": round(d.per_round, 1) if d else None}
