"""Bytes sent per peer per round in gossip mode at 4, 8 and 16 daemons (and DiLoCo alongside).

Runs ``peerd swarm`` (real ``peerd join`` processes on 127.0.0.1, real DHT and gRPC) once per
swarm size and mode with a tiny model, then divides each peer's transmitted payload bytes by the
rounds it took part in. Gossip sends one whole-fragment message per round whatever the swarm
size; DiLoCo's bytes are also about flat (reduce-scatter style) but its messages per peer grow
as 2(n-1). Writes ``bench/results/gossip_scaling.json``.

    .venv/bin/python bench/gossip_scaling.py [--sizes 4,8,16] [--steps 60] [--modes gossip,diloco]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Pacing (8 inner steps per 5 s round) leaves the CPU to the daemons' loops and DHT: bytes per
# round do not depend on training speed, and 16 unpaced workers on 2 cores starved plan
# election (most rounds aborted or "no_plan" in the first measurement).
SETTINGS = ["train.max_steps_per_round=8",
            "round.round_s=5", "round.settle_s=0.4", "round.plan_slot_s=0.6", "round.plan_candidates=2",
            "train.log_every_s=5", "task_options.d_model=48", "task_options.n_layers=2", "task_options.seq_len=48",
            "data.max_corpus_bytes=1000000", "train.threads=1", "mixing.topology=hypercube"]


def run(n: int, mode: str, steps: int, workdir: Path) -> dict:
    """One ``peerd swarm`` run; returns per-peer and aggregate bytes per round."""
    summary = workdir / f"{mode}-{n}.json"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", str(n), "--max-steps", str(steps),
           "--summary", str(summary), "--workdir", str(workdir / f"{mode}-{n}"), "--set", f"mixing.mode={mode}"]
    for s in SETTINGS:
        cmd += ["--set", s]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} n={n} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    peers = json.loads(summary.read_text())["peers"]
    per_round = [p["tx_bytes"] / max(1, p["rounds_committed"] + p["rounds_aborted"]) for p in peers]
    # Only peers that committed: a peer without a confirmed partner sends nothing (the handshake
    # comes first), and counting its 0 B as a round's cost halved the 16-daemon figure before.
    per_commit = [p["tx_bytes"] / p["rounds_committed"] for p in peers if p["rounds_committed"] > 0] or [0.0]
    committed = sum(p["rounds_committed"] for p in peers)
    return {"mode": mode, "peers": n, "wall_s": round(time.monotonic() - t0, 1),
            "tx_bytes_per_peer_per_round_mean": statistics.mean(per_round),
            "tx_bytes_per_peer_per_round_max": max(per_round),
            "tx_bytes_per_peer_per_committed_round_mean": statistics.mean(per_commit),
            "tx_bytes_per_committed_round_pooled": sum(p["tx_bytes"] for p in peers) / max(1, committed),
            "commit_fraction": committed / max(1, committed + sum(p["rounds_aborted"] for p in peers)),
            "rounds_committed": [p["rounds_committed"] for p in peers],
            "rounds_aborted": [p["rounds_aborted"] for p in peers],
            "final_eval_loss": [p["final_eval_loss"] for p in peers]}


def main() -> None:
    """Run every (mode, size) and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,8,16")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--modes", default="gossip,diloco")
    ap.add_argument("--out", default="bench/results/gossip_scaling.json")
    args = ap.parse_args()
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                try:
                    row = run(n, mode, args.steps, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # recorded, not hidden
                    rows.append({"mode": mode, "peers": n, "error": str(exc)[-500:]})
                    print(f"{mode:7s} n={n:3d}: failed", flush=True)
                else:
                    rows.append(row)
                    print(f"{mode:7s} n={n:3d}: {row['tx_bytes_per_peer_per_round_mean']:.0f} B/peer/round "
                          f"(per committed round {row['tx_bytes_per_peer_per_committed_round_mean']:.0f}, "
                          f"{row['commit_fraction']:.0%} of attempted rounds committed), "
                          f"wall {row['wall_s']} s", flush=True)
                # written after every run, so a later failure keeps the earlier measurements
                out.write_text(json.dumps({"settings": SETTINGS, "steps": args.steps, "runs": rows}, indent=1))
    print(out)


if __name__ == "__main__":
    main()
