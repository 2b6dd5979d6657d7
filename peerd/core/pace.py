"""Work-paced rounds: which fragment a round syncs, from what the members announced (pure).

With ``round.target_h = H`` a fragment is synced every H inner steps of the median member
(DiLoCo's H; in gossip mode, each member's pairwise exchange of it), on any hardware, without
idling any worker. Rounds keep ticking at the round
clock's length; each member announces in its record its inner steps/s and, per fragment, the
steps it trained since that fragment's last committed sync. At the settle point the plan's
publisher calls :func:`decide` on the candidates it sees and puts the result in the plan: the
fragment that is due, or -1 (hold: the round exchanges nothing). Members follow the plan, so
every peer of a round agrees on the fragment whatever its own view said.

The decision is made a little before the members snapshot their workers (``lead_s``: the settle
point and a plan slot), and a round is the granularity, so a fragment becomes due when its
projected median count is at least ``H - per_round / 2``: the round whose snapshot lands nearest
to H. When more fragments are due than rounds can serve (the network cannot sync that often) the
most overdue one goes first, every round syncs, and ``lag`` says how far behind the swarm is.

Medians over members keep one outlier (a 3x slower box, a fresh joiner, a bogus record) from
moving the swarm's pace. A final plan (every member done training) takes fragments round-robin,
as unpaced rounds do, so that every fragment gets its final round whatever the counts say.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from peerd.core.schedule import Candidate, fragment_for_round

HOLD = -1


@dataclass(frozen=True)
class PaceDecision:
    """What a round syncs under work pacing, and how the swarm's pace compares with the target."""

    fragment: int  # the fragment to sync, or HOLD
    projected: tuple[float, ...]  # per fragment: median steps since its sync, at this round's snapshot
    per_round: float  # the median member's inner steps per round
    lag: float  # steps the most overdue fragment is past target H (0: on time)

    @property
    def behind(self) -> bool:
        """More than a round late: the swarm syncs as often as it can and still misses H."""
        return self.lag > max(1.0, self.per_round)


def decide(candidates: Iterable[Candidate], target_h: int, num_fragments: int, r: int, round_s: float,
           lead_s: float, final: bool) -> PaceDecision:
    """The fragment round ``r`` syncs among ``num_fragments``, paced to ``target_h`` inner steps.

    ``candidates``: the round's members (eligible candidates); those that announce no counts for
    this layout are left out. Without any announced counts (no record is paced yet) the round
    falls back to the unpaced rule ``r mod num_fragments``, so a swarm never stalls on pacing.
    """
    paced = [c for c in candidates if len(c.steps_since) == num_fragments]
    if not paced:
        return PaceDecision(fragment_for_round(r, num_fragments), (), 0.0, 0.0)
    rate = statistics.median(c.steps_per_s for c in paced)
    per_round = rate * round_s
    projected = tuple(statistics.median(c.steps_since[f] for c in paced) + rate * lead_s
                      for f in range(num_fragments))
    lag = max(0.0, max(projected) - target_h)
    if final:
        return PaceDecision(fragment_for_round(r, num_fragments), projected, per_round, lag)
    due = [f for f in range(num_fragments) if projected[f] >= target_h - per_round / 2]
    fragment = max(due, key=lambda f: (projected[f], -f)) if due else HOLD
    return PaceDecision(fragment, projected, per_round, lag)
