"""Gossip churn with real daemons: a joiner clones a donor and takes half its mass; a leaver hands its mass on."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import Peer, Swarm, wait_for

GOSSIP = ["mixing.mode=gossip", "train.threads=1", "round.round_s=4", "round.settle_s=0.3",
          "round.plan_slot_s=0.4", "round.plan_candidates=2"]


def events(peer: Peer, name: str) -> list[dict]:
    out = []
    for line in peer.log_file.read_text().splitlines():
        if f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


def ready(peer: Peer) -> bool:
    status = peer.status()
    return bool(status and status["ready"])


@pytest.mark.timeout(300)
def test_join_splits_mass_and_leave_hands_it_over(swarm: Swarm) -> None:
    a = swarm.start(GOSSIP)
    a.wait_ready()
    wait_for(lambda: ready(a), 120, "first peer ready")
    assert events(a, "gossip_started")[0]["weights"] == [1.0, 1.0]  # alone: it starts the swarm
    b = swarm.start(GOSSIP)
    b.wait_ready()
    wait_for(lambda: ready(b), 120, "second peer ready")
    assert events(b, "gossip_joined")[0]["weights"] == [0.5, 0.5]  # half of the donor's mass
    committed = 'outcome="committed"'
    wait_for(lambda: a.metric_value("peerd_rounds_total", committed) >= 1, 90, "a committed exchange")
    c = swarm.start(GOSSIP)
    c.wait_ready()
    wait_for(lambda: ready(c), 120, "third peer ready")
    assert events(c, "gossip_joined"), "the third peer cloned a donor"
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(60) == 0, c.log_file.read_text()[-3000:]
    assert events(c, "gossip_handoff")[0]["ok"] is True
    assert events(a, "gossip_absorbed") or events(b, "gossip_absorbed")

    def total_weights() -> list[float] | None:
        sa, sb = a.status(), b.status()
        if not sa or not sb:
            return None
        return [x + y for x, y in zip(sa["mass_weights"], sb["mass_weights"], strict=True)]

    # Joins halve, exchanges average and the hand-off adds weights: all exact in binary floating
    # point, so the two survivors hold exactly the one unit of weight per fragment the swarm began
    # with. (Two status reads can straddle an exchange, hence a bounded wait for agreement.)
    wait_for(lambda: total_weights() == [1.0, 1.0], 30, "survivors' weights summing to exactly 1")
    before = a.metric_value("peerd_rounds_total", committed)
    wait_for(lambda: a.metric_value("peerd_rounds_total", committed) > before, 90, "exchanges after the leave")
    wait_for(lambda: total_weights() == [1.0, 1.0], 30, "weights still summing to exactly 1")
