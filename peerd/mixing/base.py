"""The mixer interface: everything the node asks of a mixing mode, and a round's outcome.

The node builds exactly one mixer (``mixing.mode``) and never branches on the mode again: the
round driver runs plans through it, the transport hands it incoming pushes and state requests,
the checkpointer saves what it exports, and join/leave go through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from peerd.core.schedule import RoundPlan
from peerd.proto.v1 import peer_pb2

ModelWriter = Callable[[dict[int, torch.Tensor]], None]


@dataclass(frozen=True)
class RoundOutcome:
    """How a round ended for this peer."""

    committed: bool
    reason: str  # "ok" or why it aborted (a small fixed set: used as a metric label)
    contributors: int = 0
    missing: tuple[str, ...] = ()  # members whose data never arrived


class Mixer(Protocol):
    """One mixing mode of one peer."""

    mode: str
    commit_lock: asyncio.Lock  # held while state and worker may disagree (checkpoints wait on it)
    shared_state: bool  # True: every member holds one state per revision (eligibility, final sync)

    async def admit(self, header: peer_pb2.ShardHeader) -> float:
        """Check an incoming push's header; return its payload deadline or raise ``Rejected``."""

    async def deliver(self, header: peer_pb2.ShardHeader, payload: bytes) -> None:
        """Take a complete, checksum-verified payload or raise ``Rejected`` (state untouched)."""

    async def state_for(self, request: peer_pb2.FetchStateRequest) -> tuple[peer_pb2.StateHeader, bytes]:
        """Serve state to a joiner or laggard."""

    async def hand_over(self, r: int) -> None:
        """Round ``r`` has no reachable member: hand the state to a reachable joiner waiting for it."""

    async def run(self, plan: RoundPlan, in_sync: bool = True) -> RoundOutcome:
        """Take part in one round as a member; returns by the plan's deadline.

        ``in_sync=False`` (shared state only): named by the plan but behind its revision; do the
        member's part that needs no state of its own and do not commit.
        """

    async def replay(self, plan: RoundPlan, until: float) -> bool:
        """Catch up on a missed round from its reduced shards (shared state only; False: not caught up)."""

    async def join(self, write_model: ModelWriter) -> None:
        """Adopt the swarm's state before training starts (never mix a fresh init into it)."""

    async def catch_up(self, not_before: float) -> bool:
        """A laggard fetches what it lacks once ``not_before`` (Unix time) has passed."""

    async def leave(self, swarm_finishing: bool) -> None:
        """Graceful leave: hand over what only this peer holds."""

    def export(self) -> dict[str, Any]:
        """Checkpoint content of the mixer (under the commit lock)."""

    def restore(self, content: dict[str, Any]) -> None:
        """Load :meth:`export` output (before training starts)."""

    def status(self) -> dict[str, Any]:
        """Mode-specific fields of ``peerd status``."""
