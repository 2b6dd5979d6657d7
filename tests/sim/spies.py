"""Monkeypatched views into a simulated run, shared by the scenario tests that need them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from peerd.node.election import PlanElection
from tests.sim.net import SimMembership


def watch_publishers(monkeypatch: pytest.MonkeyPatch) -> dict[int, set[str]]:
    """Round -> ids of the peers that published a plan for it (filled as the run goes)."""
    published: dict[int, set[str]] = {}
    original = PlanElection._publish

    def publish(self: PlanElection, r: int, *args: Any) -> Any:
        plan = original(self, r, *args)
        if plan is not None:
            published.setdefault(r, set()).add(plan.publisher)
        return plan

    monkeypatch.setattr(PlanElection, "_publish", publish)
    return published


def hide_records(monkeypatch: pytest.MonkeyPatch, hidden: Iterable[str], window: tuple[float, float],
                 reader: str | None = None) -> None:
    """Reads by ``reader`` (default: every peer) miss the ``hidden`` peers' records in ``window`` (loop time)."""
    names, original = tuple(hidden), SimMembership.live_records

    async def live_records(self: SimMembership) -> Any:
        records = await original(self)
        if records is not None and reader in (None, self.peer_id) and window[0] <= self.net.loop.time() < window[1]:
            for pid in names:
                records.pop(pid, None)
        return records

    monkeypatch.setattr(SimMembership, "live_records", live_records)
