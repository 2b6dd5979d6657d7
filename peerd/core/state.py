"""Shared outer state: outer parameters, outer Nesterov momentum, revision and hashes (CPU fp32).

Every peer that commits the same rounds holds this state bit-identically:
updates are elementwise fp32 ops on CPU applied to identical inputs in the same order, so the
result does not depend on the machine. A lock guards it because the loop thread updates it in
``asyncio.to_thread`` workers while gRPC handlers snapshot it for donors. Every mutation is
all-or-nothing: new tensors are computed first and swapped in under the lock, so a failure
half-way leaves the previous state intact.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from peerd.core.fragments import FragmentLayout, fragment_hash, state_hash


@dataclass(frozen=True)
class StateSnapshot:
    """An immutable copy of (part of) the outer state at one revision."""

    revision: int
    fragment_hashes: tuple[str, ...]
    theta: Mapping[int, torch.Tensor]
    momentum: Mapping[int, torch.Tensor]


class OuterState:
    """Outer parameters and momentum per fragment, with revision and cached hashes."""

    def __init__(self, layout: FragmentLayout, initial: Sequence[torch.Tensor]) -> None:
        """Start at revision 0 from flat fp32 fragment vectors (copied)."""
        if len(initial) != layout.num_fragments:
            raise ValueError("one initial vector per fragment required")
        self.layout = layout
        self._lock = threading.Lock()
        self._theta = [t.detach().to("cpu", torch.float32).clone() for t in initial]
        self._momentum = [torch.zeros_like(t) for t in self._theta]
        self._revision = 0
        self._hashes = [fragment_hash(t, m) for t, m in zip(self._theta, self._momentum, strict=True)]

    @property
    def revision(self) -> int:
        """Number of rounds committed into this state."""
        return self._revision

    @property
    def fragment_hashes(self) -> tuple[str, ...]:
        """Per-fragment content hashes at the current revision."""
        with self._lock:
            return tuple(self._hashes)

    def state_hash(self) -> str:
        """Hash of revision plus all fragment hashes (the value in heartbeats and summaries)."""
        with self._lock:
            return state_hash(self._revision, self._hashes)

    def theta(self, fragment: int) -> torch.Tensor:
        """A copy of one fragment's outer parameters."""
        with self._lock:
            return self._theta[fragment].clone()

    def snapshot(self, fragments: Sequence[int] | None = None) -> StateSnapshot:
        """Copy the requested fragments (default all) together with revision and hashes."""
        with self._lock:
            ids = range(self.layout.num_fragments) if fragments is None else fragments
            return StateSnapshot(
                revision=self._revision,
                fragment_hashes=tuple(self._hashes),
                theta={f: self._theta[f].clone() for f in ids},
                momentum={f: self._momentum[f].clone() for f in ids},
            )

    def apply_outer_step(
        self,
        fragment: int,
        mean_delta: torch.Tensor,
        lr: float,
        momentum: float,
        nesterov: bool,
        expected_revision: int,
    ) -> torch.Tensor:
        """Outer SGD(-Nesterov) step on one fragment with the reduced outer gradient.

        ``m = mu*m + g``; ``theta -= lr*(g + mu*m)`` (Nesterov) or ``lr*m``. A ``None``-weight
        round (nobody contributed samples) is signalled by the caller passing zeros *and* still
        bumps the revision so members stay in lock-step.

        Returns:
            The new outer parameters of the fragment (a copy).

        Raises:
            ValueError: shape mismatch or revision moved underneath the caller (nothing applied).
        """
        with self._lock:
            if self._revision != expected_revision:
                raise ValueError(f"revision moved: {self._revision} != {expected_revision}")
            theta, mom = self._theta[fragment], self._momentum[fragment]
            if mean_delta.shape != theta.shape:
                raise ValueError(f"fragment {fragment}: delta shape {tuple(mean_delta.shape)} != {tuple(theta.shape)}")
            g = mean_delta.to(torch.float32)
            new_mom = mom * momentum + g
            step = g + new_mom * momentum if nesterov else new_mom
            new_theta = theta - step * lr
            self._theta[fragment], self._momentum[fragment] = new_theta, new_mom
            self._hashes[fragment] = fragment_hash(new_theta, new_mom)
            self._revision += 1
            return new_theta.clone()

    def bump_revision(self, expected_revision: int) -> None:
        """Commit a round that carried no samples: state unchanged, revision + 1."""
        with self._lock:
            if self._revision != expected_revision:
                raise ValueError(f"revision moved: {self._revision} != {expected_revision}")
            self._revision += 1

    def install(self, revision: int, theta: Mapping[int, torch.Tensor], momentum: Mapping[int, torch.Tensor]) -> None:
        """Replace fragments with verified donor data and adopt the donor's revision atomically.

        Raises:
            ValueError: a fragment id or shape does not match the layout (nothing applied).
        """
        for f, t in theta.items():
            if not 0 <= f < self.layout.num_fragments or t.numel() != self.layout.numels[f]:
                raise ValueError(f"fragment {f}: does not match the local layout")
            if momentum[f].shape != t.shape:
                raise ValueError(f"fragment {f}: momentum shape mismatch")
        with self._lock:
            for f in theta:
                self._theta[f] = theta[f].to(torch.float32).clone()
                self._momentum[f] = momentum[f].to(torch.float32).clone()
                self._hashes[f] = fragment_hash(self._theta[f], self._momentum[f])
            self._revision = revision
