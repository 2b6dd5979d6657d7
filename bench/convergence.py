"""Convergence per byte on tinylm: DDP, hivemind, peerd diloco (fp32/int8/int4) and peerd gossip.

Same N peers, same steps per peer, same batch, model, data shards and held-out set for every
method, so total samples match. Each method runs alone, one after another, inside its own fresh
network namespace when possible: the namespace's loopback counter then gives the bytes actually
put on the wire (all protocols, headers included), measured the same way for every method, next
to each method's payload count (peerd: summary ``tx_bytes``; DDP: analytic; hivemind: none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import ddp, hivemind_baseline, netns
from bench.launch import wait_swarm

ROOT = Path(__file__).resolve().parent.parent
PEERD_METHODS = {
    "peerd_diloco_fp32": ["mixing.codec=fp32"],
    "peerd_diloco_int8": ["mixing.codec=int8"],
    "peerd_diloco_int4": ["mixing.codec=int4"],
    "peerd_gossip": ["mixing.mode=gossip"],
    # Not a required key: 2 s rounds sync 2.5x as often as the default 5 s, one more point on the
    # loss-vs-bytes frontier (the schedule settings are the ones the test suite uses for 2 s rounds).
    "peerd_diloco_int8_round2s": ["mixing.codec=int8", "round.round_s=2", "round.settle_s=0.15",
                                  "round.plan_slot_s=0.15", "round.plan_candidates=2"],
    # Not a required key: the same 2 s rounds with the worker paced to 16 inner steps per round,
    # so a fragment is averaged every ~32 steps however fast the machine runs (DiLoCo's H).
    "peerd_diloco_int8_paced": ["mixing.codec=int8", "round.round_s=2", "round.settle_s=0.15",
                                "round.plan_slot_s=0.15", "round.plan_candidates=2", "train.max_steps_per_round=16"],
}
# 1 s history points: train_s. Clock rounds (round.target_h=0): these runs are a few hundred steps,
# where the default work pacing (a fragment every 200 steps) would sync each fragment about once.
COMMON = ["train.threads=1", "train.log_every_s=1", "round.target_h=0"]


def peerd_command(peers: int, steps: int, extra: list[str]) -> list[str]:
    """The ``peerd swarm`` command line of one method (without summary/workdir paths)."""
    cmd = ["peerd", "swarm", "--peers", str(peers), "--max-steps", str(steps)]
    for item in COMMON + extra:
        cmd += ["--set", item]
    return cmd


def _run_peerd(peers: int, steps: int, extra: list[str], workdir: Path, prefix: list[str]) -> dict[str, Any]:
    from peerd.core.config import ConfigError, load_config

    try:
        load_config(None, COMMON + extra)
    except ConfigError as exc:  # e.g. gossip before it exists: record why, run nothing
        return {"error": str(exc)}
    workdir.mkdir(parents=True, exist_ok=True)
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    cmd = [*prefix, sys.executable, "-m", "peerd", *peerd_command(peers, steps, extra)[1:],
           "--summary", str(summary), "--workdir", str(workdir)]
    for stale in workdir.glob("peer-*.summary.json"):
        stale.unlink()
    with open(workdir / "swarm.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ending = wait_swarm(proc, workdir, 900 + 3 * steps)  # peerd swarm stops its children on SIGTERM
    if not summary.exists():
        return {"error": f"peerd swarm wrote no summary (exit {proc.returncode}); logs in {workdir}"}
    doc = json.loads(summary.read_text())
    ps = doc["peers"]
    losses = [p["final_eval_loss"] for p in ps if p.get("final_eval_loss") is not None]
    out: dict[str, Any] = {
        "swarm_ending": ending,
        "final_eval_loss": sum(losses) / len(losses) if losses else None,
        "tx_bytes_per_peer": sum(p.get("tx_bytes", 0) for p in ps) / len(ps),
        "bytes_method": "measured: peerd summary tx_bytes (fragment payload bytes sent), mean over peers",
        "wall_s": doc["wall_s"], "rounds_committed": max(p.get("rounds_committed", 0) for p in ps),
        "initial_eval_loss": ps[0].get("initial_eval_loss"),
        "same_state_hash": len({p.get("state_hash") for p in ps}) == 1,
        "exits": sorted({str(p.get("exit")) for p in ps}),
    }
    spans = [_train_span(p, steps) for p in ps]
    if all(s is not None for s in spans):
        out["train_s"] = round(max(spans), 3)
    if any(p.get("exit") != "done" for p in ps):
        out["warning"] = "not every peer exited 'done'"
    return out


def _train_span(peer: dict[str, Any], steps: int) -> float | None:
    """Seconds from the last history point at step 0 to the first at ``steps`` (1 s resolution)."""
    hist = peer.get("history", [])
    start = [h["t_s"] for h in hist if h["step"] == 0]
    end = [h["t_s"] for h in hist if h["step"] >= steps]
    return end[0] - start[-1] if start and end else None


def run(peers: int, steps: int, workdir: Path, task_options: dict[str, Any] | None = None,
        bench_cmd: str = "") -> dict[str, Any]:
    """Run every method once; returns ``{method: {final_eval_loss, tx_bytes_per_peer, wall_s, ...}}``."""
    use_ns = netns.available() is None
    results: dict[str, Any] = {}
    methods: list[tuple[str, Any]] = [
        ("ddp", lambda w, pre: ddp.run(peers, steps, w, pre, task_options)),
        ("hivemind", lambda w, pre: hivemind_baseline.run(peers, steps, w, pre, task_options)),
    ]
    extra_task = [f"task_options.{k}={v}" for k, v in (task_options or {}).items()]
    for name, extra in PEERD_METHODS.items():
        methods.append((name, lambda w, pre, extra=extra: _run_peerd(peers, steps, extra + extra_task, w, pre)))
    commands = {
        "ddp": f"python -m bench.ddp (N={peers} ranks, {steps} steps, gloo)",
        "hivemind": f"python -m bench.hivemind_baseline (N={peers} peers, {steps} steps)",
        **{n: " ".join(peerd_command(peers, steps, e + extra_task)) for n, e in PEERD_METHODS.items()},
    }
    for name, fn in methods:
        print(f"bench: convergence {name} ...", file=sys.stderr, flush=True)
        with netns.Lab() as lab:
            ns = lab.namespace() if use_ns else None
            before = lab.tx_bytes(ns) if ns else 0
            res = fn(workdir / name, lab.prefix(ns) if ns else [])
            if ns and "error" not in res:
                res["wire_tx_bytes_per_peer"] = (lab.tx_bytes(ns) - before) / peers
                res["wire_method"] = "measured: loopback tx_bytes of the run's own network namespace / N"
        if name == "hivemind" and "wire_tx_bytes_per_peer" in res:
            res["tx_bytes_per_peer"] = res["wire_tx_bytes_per_peer"]
            res["bytes_method"] = "measured on the wire (hivemind has no payload counter): " + res["wire_method"]
        res["peers"], res["steps_per_peer"] = peers, steps
        res["command"] = commands[name]
        res["bench_command"] = bench_cmd
        results[name] = res
        brief = {k: res.get(k) for k in ("final_eval_loss", "tx_bytes_per_peer", "wall_s", "error")}
        print(f"bench: convergence {name}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    return results
