"""AMPG: anchored, mass-conserving pairwise gossip with built-in error feedback (pure, no I/O).

Each peer holds, per fragment, push-sum mass ``z = w * theta`` (float64) and weight ``w``. An
exchange between ``i`` and ``j`` sends ``c = Q(z - w*A)`` (``A`` the fragment's anchor, a shared
compression reference) together with ``w``; both sides then apply

    d = (u_j - u_i)/2 + ((w_j - w_i)/2) * A,   z_i += d,  z_j -= d,  w_i = w_j = (w_i + w_j)/2

where ``u = decode(c)``. Both sides compute ``d`` from the *same decoded numbers*, and IEEE
subtraction and scaling by 1/2 are exactly antisymmetric, so ``j`` computes exactly ``-d``: the
pair's mass ``z_i + z_j`` changes only by the rounding of one float64 addition per element and
``w_i + w_j`` not at all (whatever the codec). The quantisation residual ``z - w*A - u`` is never
sent away: it stays in the peer's own ``z`` and rides along in its next message, which is error
feedback with no extra state, and it survives partner changes and churn because it lives in no
per-edge buffer. Consensus stalls at a floor proportional to the codec's step on ``z - w*A``.

The same functions act on single vectors (the daemon) and on ``(n, d)`` stacks of peers (the
simulator): every function broadcasts over a leading peer dimension.
"""

from __future__ import annotations

import torch

from peerd.core import codec as wire


def encode(z: torch.Tensor, w: float, anchor: torch.Tensor, codec: str, block_size: int) -> tuple[bytes, torch.Tensor]:
    """A peer's message: payload bytes and the float64 values the receiver will decode from them.

    Raises:
        peerd.core.codec.CodecError: non-finite values (a NaN never leaves the node).
    """
    y = (z - w * anchor.to(torch.float64)).to(torch.float32)
    payload = wire.encode(y, codec, block_size)
    return payload, wire.decode(payload, codec, y.numel(), block_size).to(torch.float64)


def decode(payload: bytes, codec: str, numel: int, block_size: int) -> torch.Tensor:
    """A partner's message as float64 values (the numbers both sides mix with)."""
    return wire.decode(payload, codec, numel, block_size).to(torch.float64)


def pair_delta(u_own: torch.Tensor, w_own: torch.Tensor | float, u_other: torch.Tensor,
               w_other: torch.Tensor | float, anchor: torch.Tensor) -> torch.Tensor:
    """Mass change ``d`` of the own side of an exchange; the partner's is exactly ``-d``.

    ``w_own``/``w_other`` are floats (one pair) or ``(n, 1)`` tensors (a stack of pairs).
    """
    half_dw = (w_other - w_own) * 0.5  # a Python float or float64 tensor: never float32
    return (u_other - u_own) * 0.5 + half_dw * anchor.to(torch.float64)


def pair_weight(w_own: float, w_other: float) -> float:
    """New weight of both sides (commutative, so both compute the same float)."""
    return (w_own + w_other) * 0.5


def static_delta(u: torch.Tensor, w: torch.Tensor, mix: torch.Tensor,
                 anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass and weight changes of every peer for one step of a static doubly stochastic ``mix``.

    ``z_i += sum_j W_ij (u_j - u_i + (w_j - w_i) A)``: the multi-neighbour generalisation of
    :func:`pair_delta` (``W_ij = 1/2``); mass-conserving because ``W``'s columns sum to one.
    """
    dw = mix @ w - w
    return mix @ u - u + dw * anchor.to(torch.float64), dw


def split(z: torch.Tensor, w: float) -> tuple[torch.Tensor, float]:
    """Half of a donor's mass: the donor keeps it and a joiner takes an identical copy (exact)."""
    return z * 0.5, w * 0.5


def absorb(z: torch.Tensor, w: float, z_leaver: torch.Tensor, w_leaver: float) -> tuple[torch.Tensor, float]:
    """A partner takes over a graceful leaver's mass."""
    return z + z_leaver, w + w_leaver


def outer_step(theta_outer: torch.Tensor, momentum: torch.Tensor, theta_local: torch.Tensor, lr: float,
               mu: float, nesterov: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-peer outer SGD(-Nesterov) step on the local outer gradient ``theta_outer - theta_local``.

    With ``lr = 1, mu = 0`` it returns ``theta_local``: plain gossip of the trained parameters.
    """
    g = theta_outer - theta_local
    new_m = momentum * mu + g
    step = g + new_m * mu if nesterov else new_m
    return theta_outer - step * lr, new_m


def mean_theta(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The swarm's mass-weighted mean parameters ``sum z / sum w`` (``z``: (n, d), ``w``: (n, 1))."""
    return z.sum(0) / w.sum()


def consensus_distance(z: torch.Tensor, w: torch.Tensor) -> float:
    """Root mean squared distance of the peers' ``theta = z/w`` from their mass-weighted mean."""
    theta = z / w
    return float(((theta - mean_theta(z, w)) ** 2).sum(1).mean().sqrt())
