"""Who talks to whom in a gossip round (pure, no I/O).

Every peer derives the same pairs from ``(run_id, round, peer ids)``, so a published round plan
only has to carry its members and the topology name. Members are ranked by a hash that depends on
the run only (not on the round), so a stable view gives a stable hypercube and the one-peer
hypercube's product over ``log2 n`` rounds is exact averaging (Ying et al., NeurIPS 2021).

One-peer topologies (one exchange per peer per round, O(1) traffic whatever ``n``):

* ``hypercube``: rank ``i`` pairs with ``i xor 2^(r mod k)``, ``k = ceil(log2 n)``; a partner
  rank ``>= n`` (only when ``n`` is not a power of two) leaves the peer unpaired that round.
* ``random``: a uniformly random perfect matching from the per-round seed ``H(run_id, r)``
  (one peer sits out when ``n`` is odd).
* ``ring``: the ring's even edges on even rounds, odd edges on odd rounds.

A work-paced plan (``round.target_h``) syncs a fragment only in the rounds it is due, often at a
fixed period; with the round index itself a fragment synced every third round of an 8-peer
hypercube (three dimensions) would meet the same partner forever, and one synced every second
round of a ring the same edges. Paced plans therefore pair by a per-round hash of the round
(:func:`pairing_round`): every dimension or parity keeps coming up whatever the period, at the
price of the hypercube's exact ``log2 n``-round averaging, which needs its dimensions in turn.

Static (multi-neighbour) graphs for the simulator's comparison with theory: ``ring3`` (every
peer averages with both ring neighbours, weights 1/3) and ``exponential`` (static exponential
graph, ``i -> i + 2^j``, weights ``1 / (1 + ceil(log2 n))``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence

import numpy as np

PAIRWISE = ("hypercube", "random", "ring")
STATIC = ("ring3", "exponential")
TOPOLOGIES = PAIRWISE + STATIC


def _h(*parts: object) -> bytes:
    return hashlib.blake2b("\x00".join(str(p) for p in parts).encode(), digest_size=16).digest()


def hash_order(run_id: str, peer_ids: Sequence[str]) -> list[str]:
    """Peers sorted by ``H(run_id, peer_id)``: the rank every peer agrees on for the run."""
    return sorted(set(peer_ids), key=lambda p: (_h(run_id, p), p))


def _log2_ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def partner_ranks(topology: str, run_id: str, r: int, n: int) -> list[int]:
    """Partner rank of each rank for round ``r`` (``-1``: unpaired); always an involution."""
    if topology not in PAIRWISE:
        raise ValueError(f"unknown pairwise topology {topology!r}; expected one of {PAIRWISE}")
    partner = [-1] * n
    if n < 2:
        return partner
    if topology == "hypercube":
        bit = 1 << (r % _log2_ceil(n))
        for i in range(n):
            j = i ^ bit
            partner[i] = j if j < n else -1
    elif topology == "ring":
        for i in range(r % 2, n - 1 + (r % 2 if n % 2 == 0 else 0), 2):
            a, b = i % n, (i + 1) % n
            if partner[a] < 0 and partner[b] < 0 and a != b:
                partner[a], partner[b] = b, a
    else:  # random: shuffle ranks by a per-round hash, pair neighbours in that order
        order = sorted(range(n), key=lambda i: _h(run_id, r, "match", i))
        for a, b in zip(order[0::2], order[1::2], strict=False):
            partner[a], partner[b] = b, a
    return partner


def pairing_round(run_id: str, r: int, paced: bool) -> int:
    """The index a plan of round ``r`` derives its pairs from: ``r`` for clock rounds, a hash of it when paced.

    Clock rounds sync every round, so the hypercube's dimensions and the ring's parities come in
    turn; a paced plan's rounds may fall at any period (see the module docstring).
    """
    return int.from_bytes(_h(run_id, r, "paced")[:8], "big") if paced else r


def pairs_for(topology: str, run_id: str, r: int, peer_ids: Sequence[str],
              clients: Collection[str] = ()) -> dict[str, str]:
    """Partner of each paired peer for round ``r`` over the hash-ordered ``peer_ids``.

    ``clients`` (peers nobody can dial) are paired only with reachable peers, see :func:`_repair`.
    """
    order = hash_order(run_id, peer_ids)
    ranks = partner_ranks(topology, run_id, r, len(order))
    pairs = {order[i]: order[j] for i, j in enumerate(ranks) if j >= 0}
    return _repair(pairs, order, set(clients), run_id, r) if clients else pairs


def _repair(pairs: dict[str, str], order: list[str], clients: set[str], run_id: str, r: int) -> dict[str, str]:
    """Re-pair the clients the topology left with another client (or alone) with reachable peers.

    A pair of two clients could never connect (neither can dial the other), so it is broken. Each
    such client takes an unpaired reachable peer, else one freed by breaking a reachable pair
    (both halves then serve a client or stay free). The pairs the topology made between reachable
    peers, and between a client and a reachable peer, stay as they were. Every choice follows a
    per-round hash of ``(run_id, r)``, so every member derives the same pairs from the plan and a
    client meets different reachable peers over the rounds. Clients beyond the reachable peers'
    count stay unpaired this round.
    """
    pairs = dict(pairs)
    waiting = [p for p in order if p in clients and (p not in pairs or pairs[p] in clients)]
    for p in waiting:
        pairs.pop(p, None)
    free = sorted((p for p in order if p not in clients and p not in pairs), key=lambda p: _h(run_id, r, "free", p))
    breakable = sorted({min(a, b) for a, b in pairs.items() if a not in clients and b not in clients},
                       key=lambda p: _h(run_id, r, "break", p))
    for c in sorted(waiting, key=lambda p: _h(run_id, r, "client", p)):
        if not free and breakable:
            a = breakable.pop(0)
            b = pairs.pop(a)
            del pairs[b]
            free += [a, b]
        if not free:
            break
        s = free.pop(0)
        pairs[c], pairs[s] = s, c
    return pairs


def static_weights(topology: str, n: int) -> np.ndarray:
    """Doubly stochastic mixing matrix ``W`` of a static graph (``ring3``, ``exponential``)."""
    w = np.zeros((n, n))
    if topology == "ring3":
        for i in range(n):
            for j in (i - 1, i, i + 1):
                w[i, j % n] += 1.0 / 3.0
    elif topology == "exponential":
        hops = sorted({(1 << k) % n for k in range(_log2_ceil(n))} - {0})
        for i in range(n):
            w[i, i] += 1.0 / (1 + len(hops))
            for h in hops:
                w[i, (i + h) % n] += 1.0 / (1 + len(hops))
    else:
        raise ValueError(f"unknown static topology {topology!r}; expected one of {STATIC}")
    return w


def expected_laplacian(topology: str, n: int, rounds: int = 64) -> np.ndarray:
    """Laplacian of the expected per-round communication rates ``L = sum lambda_ij (e_i-e_j)(e_i-e_j)^T``.

    For one-peer topologies the rates are averaged over ``rounds`` rounds (a period for ring and
    hypercube; the expectation ``1/(n-1)`` per edge for random matching, computed exactly).
    """
    lap = np.zeros((n, n))
    if topology == "random":
        lam = np.full((n, n), 1.0 / (n - 1) if n % 2 == 0 else 1.0 / n)
        np.fill_diagonal(lam, 0.0)
    else:
        lam = np.zeros((n, n))
        period = 2 if topology == "ring" else _log2_ceil(n)
        for r in range(period):
            for i, j in enumerate(partner_ranks(topology, "", r, n)):
                if j >= 0:
                    lam[i, j] += 1.0 / period
    lap -= lam
    np.fill_diagonal(lap, lam.sum(axis=1))
    return lap


def theory_rate(topology: str, n: int) -> float:
    """Expected per-round contraction of the squared consensus distance.

    ``ring3``/``exponential``: ``rho^2`` with ``rho`` the second-largest |eigenvalue| of ``W``;
    ``random``: ``(n-2)/(2(n-1))`` (in expectation); ``ring``: the ring's one-peer product over a
    period, per round; ``hypercube``: 0 after ``log2 n`` rounds (returned per round as nan).
    """
    if topology in STATIC:
        # Both static graphs are circulant, hence normal: |eigenvalues| are the singular values.
        ev = np.sort(np.abs(np.linalg.eigvals(static_weights(topology, n))))[::-1]
        return float(ev[1] ** 2)
    if topology == "random":
        return (n - 2) / (2 * (n - 1))
    if topology == "ring":
        prod = np.eye(n)
        for r in range(2):
            m = np.eye(n)
            for i, j in enumerate(partner_ranks("ring", "", r, n)):
                if j >= 0:
                    m[i, i], m[i, j] = 0.5, 0.5
            prod = m @ prod
        sv = np.linalg.svd(prod - np.full((n, n), 1.0 / n), compute_uv=False).max()
        return float(sv)  # the period contracts the squared distance by sv^2: sv per round
    return float("nan")
