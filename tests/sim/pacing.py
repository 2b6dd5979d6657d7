"""Work pacing in the simulation: scenarios with per-peer training speed, and what H they measured.

H is measured where DiLoCo defines it: at every committed merge, the inner steps a peer trained on
that fragment since its previous committed merge (the worker's ``synced_h``). A peer's first merge
of each fragment is left out (it counts from the peer's start, not from a sync).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from tests.sim.scenarios import random_scenario
from tests.sim.world import Scenario, SimPeer, World


def paced_scenario(seed: int, target_h: int, slow: dict[int, float] | None = None, peers: int = 4,
                   step_s: float = 0.25, duration_s: float = 80.0, config_steps: int = 0,
                   extra: dict[str, object] | None = None, **kw: object) -> Scenario:
    """``peers`` peers, each stepping every ``step_s`` times its ``slow`` factor, paced to ``target_h``.

    ``target_h`` 0: unpaced rounds; ``config_steps``: the legacy ``train.max_steps_per_round`` instead;
    ``extra``: more config keys.
    """
    config = ({"round.target_h": target_h} | ({"train.max_steps_per_round": config_steps} if config_steps else {})
              | dict(extra or {}))
    return Scenario(seed=seed, peers=peers, duration_s=duration_s, step_s=step_s, slow=dict(slow or {}),
                    config=config, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PeerPace:
    """One peer's measured pacing."""

    peer: str
    step_s: float
    h: tuple[int, ...]  # steps between consecutive committed syncs of a fragment
    trained: int
    idle: int

    @property
    def mean_h(self) -> float:
        return statistics.fmean(self.h) if self.h else float("nan")

    @property
    def idle_fraction(self) -> float:
        return self.idle / max(1, self.trained + self.idle)


def measure(w: World) -> list[PeerPace]:
    """Every peer's H samples, trained and idle step slots."""
    out = []
    for p in sorted([*w.peers.values(), *w.gone], key=lambda p: p.index):
        out.append(PeerPace(p.peer_id, p.step_s, _intervals(p), p.trained_steps, p.idle_steps))
    return out


def _intervals(p: SimPeer) -> tuple[int, ...]:
    seen: set[int] = set()
    hs = []
    for fragment, steps in p.worker.synced_h:
        if fragment in seen:
            hs.append(steps)
        seen.add(fragment)
    return tuple(hs)


def median_h(paces: list[PeerPace]) -> float:
    """The median peer's mean H (peers with at least one interval)."""
    return statistics.median(p.mean_h for p in paces if p.h)


def paced_random_scenario(seed: int, mode: str = "diloco") -> Scenario:
    """:func:`tests.sim.scenarios.random_scenario` (faults, joins, crashes, NAT) in ``mode``, paced.

    The target H is drawn from a separate stream so the scenario's other draws stay as they were:
    from one fragment every round or so (6) to one every several rounds for a slow worker (24).
    """
    sc = random_scenario(seed, mode=mode)
    sc.config["round.target_h"] = random.Random(seed * 104729 + 3).choice((6, 12, 24))
    return sc
