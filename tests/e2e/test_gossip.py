"""Gossip mode end to end: 8 real daemons on loopback mix pairwise and each beats a solo peer."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, Swarm, train_alone

STEPS = 160
PEERS = 8
# Longer rounds and plan slots than FAST: with 8 daemons on 2 cores the plan's DHT round trip
# often misses FAST's 0.45 s plan window (measured: most rounds "no_plan", in diloco mode too).
# At most 20 inner steps per round: with clock rounds alone, 8 daemons on 2 cores made 3-5
# exchanges in 160 steps (about 50 steps apart), and mixing that rarely left every peer worse than
# the same peer training alone (measured at 480 steps: 2.23-2.28 against 2.12-2.20 alone; a CI run
# at 160 steps ended one peer above the solo run). Every 20 steps it beats them (2.42-2.47 against
# 2.39-2.61 alone, 9 exchanges).
SETTINGS = [s for s in FAST if not s.startswith(("transport.host", "dht.host", "round."))] + [
    "train.threads=1", "round.round_s=5", "round.settle_s=0.4", "round.plan_slot_s=0.6", "round.plan_candidates=2",
    "train.max_steps_per_round=20"]
# Measurement only (BENCHMARKS.md, "Work-paced gossip"): E2E_GOSSIP_TARGET_H=H runs the gossip
# swarm with work pacing instead (round.target_h=H, "default" for gossip's default, 0 for clock
# rounds), no worker idling, under the same assertions. On a 2-core box it does not pass them:
# at 25-30 steps per 5 s round no pacing can exchange more often than every round.
PACED = os.environ.get("E2E_GOSSIP_TARGET_H")
# Measurement only: E2E_GOSSIP_SETS="key=value ..." adds settings to every run here (one peer, the
# shards alone, the swarm), e.g. a larger model to stand for a slower box (fewer steps a round).
SETTINGS += os.environ.get("E2E_GOSSIP_SETS", "").split()


def run_swarm(tmp_path: Path, peers: int, extra: list[str], settings: list[str] = SETTINGS) -> dict:
    summary = tmp_path / f"swarm-{peers}.json"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", str(peers), "--max-steps", str(STEPS),
           "--summary", str(summary), "--workdir", str(tmp_path / f"w{peers}")]
    for s in settings + extra:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(summary.read_text())


@pytest.mark.timeout(900)
def test_eight_gossip_peers_each_beat_a_solo_peer(tmp_path: Path, swarm: Swarm) -> None:
    solo = run_swarm(tmp_path, 1, [])["peers"][0]
    # No pacing alone: nobody to mix with, so the same steps and batches either way, sooner.
    alone = train_alone(swarm, PEERS, [s for s in SETTINGS if not s.startswith("train.max_steps_per_round")], STEPS)
    settings, extra = SETTINGS, ["mixing.mode=gossip", "mixing.topology=hypercube"]
    if PACED is not None:
        settings = [s for s in SETTINGS if not s.startswith("train.max_steps_per_round")]
        extra += [] if PACED == "default" else [f"round.target_h={int(PACED)}"]
    result = run_swarm(tmp_path, PEERS, extra, settings)
    peers = result["peers"]
    assert result["mode"] == "gossip" and len(peers) == PEERS
    losses = [p["final_eval_loss"] for p in peers]
    print(f"\nsolo final eval loss {solo['final_eval_loss']:.4f}; each shard alone {[round(a, 4) for a in alone]} "
          f"(mean {statistics.fmean(alone):.4f}); gossip peers {[round(x, 4) for x in losses]} (mean "
          f"{statistics.fmean(losses):.4f}, spread {max(losses) - min(losses):.4f}, stdev "
          f"{statistics.pstdev(losses):.4f}); committed exchanges per peer {[p['rounds_committed'] for p in peers]}"
          f"; held rounds per peer {[p.get('rounds_held') for p in peers]}; gossip swarm wall {result['wall_s']:.0f} s")
    # Peer i trained shard i (peerd swarm numbers them as train_alone does): what mixing gave each.
    print("each peer minus its shard alone", [round(p["final_eval_loss"] - alone[p["index"]], 4) for p in peers])
    for p in peers:
        assert p["exit"] == "done" and p["steps"] == STEPS
        assert p["rounds_committed"] > 0 and p["tx_bytes"] > 0 and p["rx_bytes"] > 0
        assert p["final_eval_loss"] < solo["final_eval_loss"], (p["final_eval_loss"], solo["final_eval_loss"])
    # The same shards, the same steps: mixing must pay on average. (Per peer it is not guaranteed:
    # the best shard alone, 2.39, measured about as good as its peer after mixing, 2.42.)
    assert statistics.fmean(losses) < statistics.fmean(alone), (losses, alone)
    # Parameters legitimately differ per peer in gossip mode: no common hash is expected.
    assert len({p["state_hash"] for p in peers}) > 1
