"""A2CiD2 continuous momentum for gossip (Nabli et al., NeurIPS 2023; pure, no I/O).

Each peer keeps a second copy ``zt`` of its mass next to ``z`` (same weight ``w``). Between
events the pair follows ``d[z, zt]/dt = eta [[-1, 1], [1, -1]] [z, zt]``; a local update is
applied to both copies; at a committed exchange with mass change ``d`` (``d = (x_j - x_i)/2`` for
equal weights) the momentum copy moves ``zt += 2 * alpha_t * d``. Both rules keep ``sum z`` and
``sum zt`` unchanged, so A2CiD2 composes with AMPG's mass conservation and with churn (a joiner
halves ``zt`` like ``z``). Constants come from the expected communication Laplacian ``L``
(Prop. 3.6): ``chi1 = 1/lambda_2(L)``, ``chi2 = max over edges of (e_i-e_j)^T L^+ (e_i-e_j)/2``,
``eta = 1/(2 sqrt(chi1 chi2))``, ``alpha_t = sqrt(chi1/chi2)/2``. Time is counted in rounds, each
peer communicating once per round, i.e. the paper's ``rate_com = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class A2cid2Constants:
    """Topology-derived constants of A2CiD2."""

    chi1: float
    chi2: float
    eta: float
    alpha_t: float


def constants(laplacian: np.ndarray) -> A2cid2Constants:
    """Constants of Prop. 3.6 from a communication-rate Laplacian (connected graph).

    Raises:
        ValueError: the graph is disconnected or has a single node.
    """
    n = laplacian.shape[0]
    ev = np.sort(np.linalg.eigvalsh(laplacian))
    if n < 2 or ev[1] <= 1e-12:
        raise ValueError("A2CiD2 needs a connected communication graph of at least 2 peers")
    pinv = np.linalg.pinv(laplacian)
    chi2 = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if laplacian[i, j] < 0:  # an edge that carries traffic
                chi2 = max(chi2, 0.5 * (pinv[i, i] + pinv[j, j] - 2 * pinv[i, j]))
    chi1, chi2 = float(1.0 / ev[1]), float(chi2)
    return A2cid2Constants(chi1, chi2, 1.0 / (2 * math.sqrt(chi1 * chi2)), 0.5 * math.sqrt(chi1 / chi2))


def ode_mix(z: torch.Tensor, zt: torch.Tensor, eta: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow the pair ``(z, zt)`` for time ``dt``: ``exp(eta dt [[-1,1],[1,-1]])`` in closed form."""
    a = 0.5 * (1.0 + math.exp(-2.0 * eta * dt))
    return z * a + zt * (1.0 - a), z * (1.0 - a) + zt * a


def on_exchange(zt: torch.Tensor, delta: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """Momentum copy after a committed exchange whose mass change on this side was ``delta``."""
    return zt + delta * (2.0 * alpha_t)
