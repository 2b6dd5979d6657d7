"""Gossip that pays: N gossip daemons against one peer alone and against each shard alone, at equal steps.

``python -m bench.gossip_real --peers 8 --steps 1000`` runs, one after the other on loopback:

- ``peerd swarm --peers N --max-steps S --set mixing.mode=gossip``: peer i trains shard i of N and
  exchanges fragments with the partners each round names (the shipped gossip defaults, work-paced
  at ``round.target_h`` 40 unless ``--set`` says otherwise);
- each shard alone: N unconnected ``peerd join`` daemons, daemon i on shard i of N, same task,
  init, steps and held-out set, no mixing (:func:`bench.launch.run_peers`, one run id each).

The one-peer reference (``peerd swarm --peers 1`` on the whole corpus, read up to
``data.max_corpus_bytes``) comes from ``peerd/ops/solo_reference.json`` when it holds these steps,
or is measured (``--solo``). Gossip has no shared state: every peer evaluates its own merged
model, so the question is per peer. Each shard alone is the stricter baseline: a shard is a random
set of files, and at the tests' small corpus cap some shards trained alone beat the whole-corpus
run (see BENCHMARKS, "Collaboration against each shard trained alone").

Writes ``bench/results/gossip_real.json``. Losses at equal steps do not depend on the box's speed
except through when exchanges happen; the load is recorded for each part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import defaults_real
from bench.launch import PeerSpec, run_peers
from bench.report import _num

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gossip_real.json"


def _losses(run: dict[str, Any]) -> list[float | None]:
    """Final eval loss per peer index (None where a peer reported none)."""
    peers = sorted(run.get("peers") or [], key=lambda p: p.get("index", 0))
    return [p.get("final_eval_loss") for p in peers]


def compare(gossip: list[float | None], alone: list[float | None], solo: float) -> dict[str, Any]:
    """Per peer: its loss, its shard alone, the differences; and how many beat each baseline."""
    rows = [{"shard": i, "gossip": g, "alone": a,
             "minus_alone": None if g is None or a is None else round(g - a, 4),
             "minus_solo": None if g is None else round(g - solo, 4)}
            for i, (g, a) in enumerate(zip(gossip, alone, strict=True))]
    got = [r for r in rows if r["gossip"] is not None]
    return {
        "rows": rows,
        "below_solo": sum(1 for r in got if r["minus_solo"] < 0),
        "below_alone": sum(1 for r in got if r["minus_alone"] is not None and r["minus_alone"] < 0),
        "peers_reporting": len(got),
        "gossip_mean": round(statistics.mean(r["gossip"] for r in got), 4) if got else None,
        "alone_mean": round(statistics.mean(a for a in alone if a is not None), 4) if any(alone) else None,
        "worst_minus_solo": max((r["minus_solo"] for r in got), default=None),
        "worst_minus_alone": max((r["minus_alone"] for r in got if r["minus_alone"] is not None), default=None),
    }


def run(peers: int, steps: int, sets: list[str], workdir: Path, solo_cached: bool = True) -> dict[str, Any]:
    """The gossip swarm, the shards alone and the one-peer reference; the comparison."""
    timeout_s = 300 + steps * 1.0
    doc: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "peers": peers, "steps": steps,
                           "sets": sets}
    print(f"bench: gossip_real, {peers} gossip daemons x {steps} steps ...", file=sys.stderr, flush=True)
    g = defaults_real.swarm(peers, steps, ["mixing.mode=gossip", *sets], workdir / "gossip", timeout_s)
    doc["gossip"] = {k: g.get(k) for k in ("command", "rc", "wall_s", "loadavg_1m_start", "loadavg_1m_end", "error")}
    doc["gossip"]["peers"] = [{k: p.get(k) for k in ("index", "final_eval_loss", "steps", "tx_bytes",
                                                     "rounds_committed", "rounds_aborted", "rounds_held", "exit")}
                              for p in g.get("peers") or []]
    print(f"bench: gossip_real, {peers} shards alone ...", file=sys.stderr, flush=True)
    load0 = os.getloadavg()[0]
    specs = [PeerSpec(run_id=f"alone-{i}", bootstrap_from=None) for i in range(peers)]
    a = run_peers(specs, [s for s in sets if not s.startswith(("round.", "mixing."))], steps, workdir / "alone",
                  timeout_s)
    doc["alone"] = {"wall_s": a["wall_s"], "loadavg_1m_start": round(load0, 2),
                    "loadavg_1m_end": round(os.getloadavg()[0], 2),
                    "losses": _losses(a), "exits": [p.get("exit") for p in a["peers"]]}
    solo = defaults_real.cached_solo(steps) if solo_cached and not sets else None
    doc["solo_source"] = f"cached: {defaults_real.SOLO_CACHE.relative_to(ROOT)}"
    if solo is None:
        s = defaults_real.swarm(1, steps, sets, workdir / "solo", timeout_s)
        if not s.get("peers") or s["peers"][0].get("final_eval_loss") is None:
            return {**doc, "error": f"solo run: {s.get('error')}"}
        solo, doc["solo_source"] = s["peers"][0]["final_eval_loss"], "measured in this run"
    doc["solo_final_eval_loss"] = solo
    gl = _losses(g)
    if len(gl) != peers or len(doc["alone"]["losses"]) != peers:
        return {**doc, "error": f"{len(gl)} gossip and {len(doc['alone']['losses'])} alone peers reported"}
    doc["compare"] = compare(gl, doc["alone"]["losses"], solo)
    return doc


def targets(doc: dict[str, Any], add: Any) -> None:
    """Issue 12: every gossip peer ends below one peer alone; and (stricter) below its shard alone."""
    n = doc.get("peers")
    name = f"{n} gossip peers x {doc.get('steps')} steps: each below one peer alone"
    c = doc.get("compare")
    if not c or doc.get("error"):
        add(name, None, None, f"run failed: {doc.get('error')}")
        return
    worst = c["worst_minus_solo"]
    add(name, worst, c["below_solo"] == n, f"{c['below_solo']} of {n} below {doc['solo_final_eval_loss']:.4f}; "
        f"worst peer {worst:+.4f}")
    worst = c["worst_minus_alone"]
    add(f"{n} gossip peers (stricter): each below its own shard trained alone", worst, c["below_alone"] == n,
        f"{c['below_alone']} of {n}; mean {c['gossip_mean']:.4f} vs {c['alone_mean']:.4f}; worst peer {worst:+.4f}")


def table(doc: dict[str, Any]) -> list[str]:
    """Markdown rows: every peer against its shard alone and against one peer alone."""
    c = doc.get("compare") or {}
    lines = ["", f"### Gossip against training alone ({doc.get('peers')} daemons x {doc.get('steps')} steps, "
             "loopback)", "",
             f"One peer alone on the whole corpus: {doc.get('solo_final_eval_loss')} ({doc.get('solo_source')}). "
             f"Gossip wall {doc.get('gossip', {}).get('wall_s', 0):.0f} s, load 1m "
             f"{doc.get('gossip', {}).get('loadavg_1m_start')} → {doc.get('gossip', {}).get('loadavg_1m_end')}.", "",
             "| shard | gossip peer | shard alone | peer − alone | peer − one peer alone |", "|---|---|---|---|---|"]
    for r in c.get("rows", []):
        lines.append(f"| {r['shard']} | {_num(r['gossip'], '.4f')} | {_num(r['alone'], '.4f')} | "
                     f"{_num(r['minus_alone'], '+.4f')} | {_num(r['minus_solo'], '+.4f')} |")
    lines.append(f"\nCommand: `{doc.get('command', '')}`.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI: run, write the JSON, print the comparison."""
    ap = argparse.ArgumentParser(prog="python -m bench.gossip_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more config for the gossip peers")
    ap.add_argument("--solo", action="store_true", help="run the one-peer reference instead of the cache")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/peerd-gossip-real"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    doc = run(a.peers, a.steps, a.sets, a.workdir, not a.solo)
    doc["command"] = " ".join(["python -m bench.gossip_real", *(argv if argv is not None else sys.argv[1:])])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc.get("compare") or {"error": doc.get("error")}, indent=1))
    return 1 if doc.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
