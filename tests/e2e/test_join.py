"""A late joiner pulls the swarm's outer state from several donors, verifies it, then mixes."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import Swarm, wait_for


@pytest.mark.timeout(240)
def test_joiner_syncs_from_two_donors_then_commits(swarm: Swarm) -> None:
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    committed = 'outcome="committed"'
    wait_for(lambda: a.metric_value("peerd_rounds_total", committed) >= 2, 120, "two committed rounds")
    c = swarm.start()
    c.wait_ready()
    synced = [json.loads(line) for line in c.log_file.read_text().splitlines() if '"synced"' in line]
    assert synced, "the joiner must download state before training"
    first = synced[0]
    assert first["donors"] == 2 and first["fragments"] == 2 and first["revision"] >= 2
    wait_for(lambda: c.metric_value("peerd_rounds_total", committed) >= 2, 90, "joiner commits rounds")
    for p in (a, b, c):
        p.proc.send_signal(signal.SIGTERM)
    for p in (a, b, c):
        assert p.proc.wait(60) == 0
    sums = [p.summary() for p in (a, b, c)]
    top = max(s["revision"] for s in sums)
    assert len({s["state_hash"] for s in sums if s["revision"] == top}) == 1
    assert sums[2]["syncs"][0]["bytes"] > 0
