"""The daemon's defaults against the variants they were chosen over, with real daemons: equal samples.

``python -m bench.defaults_real --steps 2000`` runs ``peerd swarm --peers 4 --max-steps N`` once per
variant, one after another on loopback, and DDP (``bench.ddp``, gloo, 4 ranks x N steps) in the
same run. Every variant trains the same task, shards, init and held-out set; only the round pacing
and the outer step differ:

- ``default``: the shipped defaults (work-paced rounds at ``round.target_h`` 200, outer Nesterov
  lr 0.8 / momentum 0.5, int8);
- ``paced_plain``: the same pacing with plain averaging (outer lr 1, momentum 0);
- ``clock_plain``: the defaults before 2026-11-30: every 5 s round syncs a fragment (H follows the
  hardware and the load), plain averaging;
- ``clock_momentum``: clock rounds with the paced default's outer step (Nesterov 0.8 / 0.5); it
  measured so much worse that unset outer keys resolve to plain averaging with clock rounds.

``share`` is the part of DDP's loss gain over one peer alone that a variant captures. The solo
reference is ``peerd swarm --peers 1`` at the same steps, deterministic, cached in
``peerd/ops/solo_reference.json`` (``--solo`` runs it instead). ``bytes_vs_ddp`` divides DDP's
payload (a ring all-reduce of fp32 gradients every step) by the peer's wire bytes sent (``tx``).
``h_mean``: inner steps between two committed syncs of a fragment (first and last left out).
Clock rounds depend on the load (how many rounds fit the run); the load is recorded per variant.
Writes ``bench/results/defaults_real.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import ddp
from bench.launch import stop_all
from bench.paced_real import intervals

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "defaults_real.json"
SOLO_CACHE = ROOT / "peerd" / "ops" / "solo_reference.json"
PLAIN = ["mixing.outer_lr=1.0", "mixing.outer_momentum=0.0"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "paced_plain": PLAIN,
    "clock_plain": ["round.target_h=0", *PLAIN],
    "clock_momentum": ["round.target_h=0", "mixing.outer_lr=0.8", "mixing.outer_momentum=0.5"],
}


def swarm(peers: int, steps: int, sets: list[str], workdir: Path, timeout_s: float) -> dict[str, Any]:
    """One ``peerd swarm`` run; its summary JSON plus wall time and load."""
    workdir.mkdir(parents=True, exist_ok=True)
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", str(peers), "--max-steps", str(steps),
           "--summary", str(summary), "--workdir", str(workdir / "peers")]
    for s in sets:
        cmd += ["--set", s]
    load0, t0 = os.getloadavg()[0], time.monotonic()
    with open(workdir / "swarm.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # SIGTERM first (peerd swarm then stops its daemons; a SIGKILL would orphan them).
            stop_all([proc], grace_s=60)
            rc = None
    out: dict[str, Any] = {"command": " ".join(["peerd swarm", *cmd[4:-4], *[f"--set {s}" for s in sets]]),
                           "rc": rc, "wall_s": round(time.monotonic() - t0, 1), "loadavg_1m_start": round(load0, 2),
                           "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    if not summary.exists():
        return {**out, "error": f"no summary (exit {rc}); log in {workdir / 'swarm.log'}"}
    return {**out, **json.loads(summary.read_text())}


def score(run: dict[str, Any], solo: float, ddp_loss: float, ddp_bytes: float) -> dict[str, Any]:
    """Loss, share of DDP's gain, bytes and rounds of one swarm run (every peer, and their mean)."""
    peers = run.get("peers") or []
    losses = [p["final_eval_loss"] for p in peers if p.get("final_eval_loss") is not None]
    if not losses:
        return {"error": run.get("error", "no peer reported a final eval loss")}
    loss = statistics.mean(losses)
    tx = statistics.mean(p.get("tx_bytes", 0) for p in peers)
    hs = [h for p in peers for h in intervals(p.get("sync_h", []))]
    return {"final_eval_loss": round(loss, 4), "loss_spread": round(max(losses) - min(losses), 4),
            "share": round((solo - loss) / (solo - ddp_loss), 4), "tx_bytes_per_peer": round(tx),
            "bytes_vs_ddp": round(ddp_bytes / tx, 1) if tx else None,
            "h_mean": round(statistics.mean(hs), 1) if hs else None,
            "rounds_committed": [p.get("rounds_committed") for p in peers],
            "rounds_aborted": [p.get("rounds_aborted") for p in peers],
            "rounds_held": [p.get("rounds_held") for p in peers],
            "hashes": sorted({p.get("state_hash", "")[:6] for p in peers}),
            "wall_s": run["wall_s"], "loadavg_1m": [run["loadavg_1m_start"], run["loadavg_1m_end"]],
            "command": run["command"]}


def cached_solo(steps: int) -> float | None:
    """The cached one-peer reference at the default task and data for ``steps`` steps, if any."""
    for e in json.loads(SOLO_CACHE.read_text())["entries"]:
        fp = e["fingerprint"]
        if fp["max_steps"] == steps and fp["task"] == "tinylm" and not fp["task_options"] and fp["seed"] == 0:
            return float(e["final_eval_loss"])
    return None


def run(steps: int, names: list[str], workdir: Path, solo_cached: bool = True,
        out: Path | None = None) -> dict[str, Any]:
    """DDP, the solo reference and the named variants, one after another; ``out`` is rewritten after each."""
    timeout_s = 120 + steps * 0.5
    doc: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps, "peers": 4, "variants": {}}
    d = ddp.run(4, steps, workdir / "ddp", timeout_s=timeout_s * 2)
    if "error" in d:
        return {**doc, "error": d["error"]}
    doc["ddp"] = d
    solo = cached_solo(steps) if solo_cached else None
    doc["solo_source"] = f"cached: {SOLO_CACHE.relative_to(ROOT)}"
    if solo is None:
        s = swarm(1, steps, [], workdir / "solo", timeout_s)
        if not s.get("peers"):
            return {**doc, "error": f"solo run: {s.get('error')}"}
        solo, doc["solo_source"] = s["peers"][0]["final_eval_loss"], "measured in this run"
    doc["solo_final_eval_loss"] = solo
    for name in names:
        print(f"bench: defaults_real, {name} ...", file=sys.stderr, flush=True)
        res = swarm(4, steps, VARIANTS[name], workdir / name, timeout_s)
        doc["variants"][name] = r = {"sets": VARIANTS[name], **score(res, solo, d["final_eval_loss"],
                                                                     d["tx_bytes_per_peer"])}
        print(json.dumps({k: r.get(k) for k in ("final_eval_loss", "share", "bytes_vs_ddp", "h_mean",
                                                 "rounds_committed", "error")} | {"variant": name}), flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def targets(doc: dict[str, Any], add: Any) -> None:
    """Issue 12's equal-samples target with real daemons: the default >= 60% of DDP's gain at >= 300x."""
    v = doc.get("variants", {}).get("default")
    name = f"real daemons, 4 x {doc.get('steps')}: peerd default >= 60% of DDP's gain at >= 300x fewer wire bytes"
    if not v or v.get("error") or doc.get("error"):
        add(name, None, None, f"run failed: {(v or {}).get('error') or doc.get('error')}")
        return
    share, x = v["share"], v["bytes_vs_ddp"] or 0
    add(name, share, share >= 0.6 and x >= 300, f"{share:.1%} of the gain at {x:.0f}x fewer bytes")
    old = doc["variants"].get("clock_plain")
    if old and not old.get("error"):
        d = share - old["share"]
        add("default vs the earlier defaults (clock rounds, plain averaging), same run", d, d >= 0,
            f"{share:.1%} vs {old['share']:.1%} ({d * 100:+.1f} points)")


def table(doc: dict[str, Any]) -> list[str]:
    """Markdown rows of the defaults comparison."""
    lines = ["", f"### Defaults against their alternatives (real daemons, 4 peers x {doc.get('steps')} steps)", "",
             f"DDP {doc.get('ddp', {}).get('final_eval_loss', float('nan')):.4f}, one peer alone "
             f"{doc.get('solo_final_eval_loss', float('nan')):.4f} ({doc.get('solo_source')}).", "",
             "| variant | eval loss | share of DDP's gain | wire bytes vs DDP | H | rounds committed / aborted | "
             "load 1m | overrides |", "|---|---|---|---|---|---|---|---|"]
    for name, v in doc.get("variants", {}).items():
        if v.get("error"):
            lines.append(f"| {name} | error: {str(v['error'])[:160]} | | | | | | |")
            continue
        lines.append(f"| {name} | {v['final_eval_loss']:.4f} | {v['share']:.1%} | {v['bytes_vs_ddp']:.0f}x | "
                     f"{v['h_mean']} | {max(v['rounds_committed'])} / {max(v['rounds_aborted'])} | "
                     f"{v['loadavg_1m'][0]} / {v['loadavg_1m'][1]} | {' '.join(v['sets']) or '(defaults)'} |")
    lines.append(f"\nCommand: `{doc.get('command', '')}`.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI: run DDP, the solo reference (cached unless ``--solo``) and the variants; write the JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.defaults_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--only", action="append", choices=tuple(VARIANTS))
    ap.add_argument("--solo", action="store_true", help="run the one-peer reference instead of the cache")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/peerd-defaults-real"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    doc = run(a.steps, a.only or list(VARIANTS), a.workdir, not a.solo, a.out)
    doc["command"] = " ".join(["python -m bench.defaults_real", *(argv if argv is not None else sys.argv[1:])])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    if doc.get("error"):
        print(doc["error"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
