"""``peerd swarm``: four real daemons beat one, rounds commit, and everyone ends bit-identical."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, Swarm, train_alone

STEPS = 300
# The swarm's own launcher sets hosts, shards and steps; keep only the speed settings here.
# Pacing bounds the inner steps between syncs (DiLoCo's H) whatever the machine's speed: without
# it a fast or idle CI box trained 300 steps in 3-4 rounds, and an average of four models that
# barely mixed (3.08) lost to the solo peer (2.58).
SETTINGS = [s for s in FAST if not s.startswith(("transport.host", "dht.host"))] + ["train.max_steps_per_round=20"]


def run_swarm(tmp_path: Path, peers: int) -> dict:
    summary = tmp_path / f"swarm-{peers}.json"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", str(peers), "--max-steps", str(STEPS),
           "--summary", str(summary), "--workdir", str(tmp_path / f"w{peers}")]
    for s in SETTINGS:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "eval loss" in res.stdout  # the result table
    return json.loads(summary.read_text())


@pytest.mark.timeout(900)
def test_four_peers_beat_one_and_end_identical(tmp_path: Path, swarm: Swarm) -> None:
    solo = run_swarm(tmp_path, 1)["peers"][0]
    # The swarm's four shards, each trained alone (unpaced: nobody to mix with, same steps and batches).
    alone = train_alone(swarm, 4, [s for s in SETTINGS if not s.startswith("train.max_steps_per_round")], STEPS)
    result = run_swarm(tmp_path, 4)
    peers = result["peers"]
    assert result["mode"] == "diloco" and len(peers) == 4
    print(f"\nsolo {solo['final_eval_loss']:.4f}; each shard alone {[round(a, 4) for a in alone]}; swarm",
          [(p.get("final_eval_loss"), p.get("rounds_committed"), p.get("rounds_aborted")) for p in peers])
    for p in peers:
        assert p["exit"] == "done" and p["steps"] == STEPS
        assert p["rounds_committed"] > 0 and p["tx_bytes"] > 0 and p["rx_bytes"] > 0
        assert p["final_eval_loss"] < p["initial_eval_loss"]
        assert p["final_eval_loss"] < solo["final_eval_loss"], (p["final_eval_loss"], solo["final_eval_loss"])
        # The same shards and steps alone, on average (measured: 2.25 against 2.28-2.43 alone).
        assert p["final_eval_loss"] < statistics.fmean(alone), (p["final_eval_loss"], alone)
    assert len({p["revision"] for p in peers}) == 1
    assert len({p["state_hash"] for p in peers}) == 1
    assert solo["rounds_committed"] == 0  # alone, nobody to mix with


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reduced", [[], ["mixing.reduced_density=0.05"]], ids=["union_mean", "sparse_mean"])
def test_sparse_codec_swarm_ends_identical(tmp_path: Path, reduced: list[str]) -> None:
    """Three daemons on the sparse codec: contributions are top-k; owners send the mean as the exact
    union of their supports, or (mixing.reduced_density) top-k again with owner error feedback."""
    summary = tmp_path / "swarm-sparse.json"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", "3", "--max-steps", "120",
           "--summary", str(summary), "--workdir", str(tmp_path / "w")]
    for s in [*SETTINGS, "mixing.codec=sparse", "mixing.sparse_density=0.05", *reduced]:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    peers = json.loads(summary.read_text())["peers"]
    for p in peers:
        assert p["exit"] == "done" and p["rounds_committed"] > 0
        assert p["final_eval_loss"] < p["initial_eval_loss"]
    assert len({p["revision"] for p in peers}) == 1
    assert len({p["state_hash"] for p in peers}) == 1


@pytest.mark.timeout(600)
def test_work_paced_swarm_holds_rounds_syncs_every_h_steps_and_ends_identical(tmp_path: Path) -> None:
    """Three daemons with round.target_h: v3 records and paced plans through the real DHT, sealing and gRPC.

    No idling knob: the workers train flat out, rounds with no fragment due are held (no exchange),
    and every committed merge a daemon made reports the steps it carried (DiLoCo's H). The H values
    are not checked against the target here (a loaded box changes steps per round mid-run, and the
    round granularity is the bench's business: bench/work_paced.py); that syncs happened, that held
    rounds happened and that no worker idled is.
    """
    summary = tmp_path / "swarm-paced.json"
    settings = [s for s in SETTINGS if not s.startswith("train.max_steps_per_round")] + ["round.target_h=300"]
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", "3", "--max-steps", "900",
           "--summary", str(summary), "--workdir", str(tmp_path / "w")]
    for s in settings:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    peers = json.loads(summary.read_text())["peers"]
    print("\npaced:", [(p["rounds_committed"], p["rounds_held"], p["rounds_aborted"], p["sync_h"]) for p in peers])
    for p in peers:
        assert p["exit"] == "done" and p["steps"] == 900 and p["paced_idle_s"] == 0.0
        assert p["rounds_committed"] > 0 and p["sync_h"]
        assert p["final_eval_loss"] < p["initial_eval_loss"]
    assert sum(p["rounds_held"] for p in peers) > 0
    assert len({p["revision"] for p in peers}) == 1
    assert len({p["state_hash"] for p in peers}) == 1
