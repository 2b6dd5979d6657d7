"""Work pacing with real daemons and one slow peer: ``python -m bench.paced_real``.

Four ``peerd join`` daemons on loopback (``bench.launch``), one of them about 3x slower per
inner step because it trains 3x larger batches (``task_options.batch_size``), which is also how
a slower box contributes: in proportion to its samples. Each case trains until every peer did
its steps (the slow peer a third as many, so all train for about the same time) and reports,
per peer: the H it saw (inner steps between two of its committed syncs of a fragment, from the
summary's ``sync_h``; each fragment's first sync, counted from the start, and its last, the
run's final round, are left out),
its training rate, the seconds its worker idled for pacing (``paced_idle_s``) and its rounds.
The median peer's mean H is compared with the target.

Cases: ``paced`` sets ``round.target_h``; ``clock`` sets ``round.target_h=0`` (every round syncs
the fragment ``round mod 2``, so H follows the hardware; the default before 2026-11-30).
``--set KEY=VALUE`` passes more config to every peer (``--set mixing.mode=gossip``: gossip's
pairwise exchanges, paced the same way).
Writes ``bench/results/paced_real.json``.
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

from bench.launch import PeerSpec, run_peers, training_rate

RESULTS = Path(__file__).resolve().parent / "results" / "paced_real.json"
BATCH = 16  # tinylm's default batch_size


def intervals(sync_h: list[list[int]]) -> list[int]:
    """Steady-state H samples of one peer: steps at each committed sync of a fragment.

    Each fragment's first sync counts from the start of training and its last is the run's
    final round (after the worker stopped: 0 steps, or a partial count), so both are left out.
    """
    per: dict[int, list[int]] = {}
    for fragment, steps in sync_h:
        per.setdefault(fragment, []).append(steps)
    return [h for hs in per.values() for h in hs[1:-1]]


def summarize(peers_in: list[dict[str, Any]], target_h: int, steps: int) -> dict[str, Any]:
    """Per-peer H, rate, idling and rounds from the peers' run summaries; the median peer's H."""
    peers = []
    for p in peers_in:
        hs = intervals(p.get("sync_h", []))
        peers.append({"index": p["index"], "steps": p.get("steps"), "exit": p.get("exit"),
                      "steps_per_s": training_rate(p, p.get("steps") or steps),
                      "h_mean": round(statistics.mean(hs), 1) if hs else None, "h_min": min(hs, default=None),
                      "h_max": max(hs, default=None), "h_samples": len(hs), "sync_h": p.get("sync_h"),
                      "paced_idle_s": p.get("paced_idle_s"), "rounds_committed": p.get("rounds_committed"),
                      "rounds_held": p.get("rounds_held"), "rounds_aborted": p.get("rounds_aborted"),
                      "final_eval_loss": p.get("final_eval_loss")})
    means = [p["h_mean"] for p in peers if p["h_mean"] is not None]
    med = statistics.median(means) if means else None
    return {"target_h": target_h, "median_peer_h": med,
            "deviation": round(med / target_h - 1, 3) if med and target_h else None, "peers": peers}


def run_case(target_h: int, steps: int, slow: float, workdir: Path, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """One swarm: peers 0-2 train ``steps`` steps, peer 3 ``steps / slow`` steps of ``slow``x larger batches."""
    specs = [PeerSpec(run_id=f"paced-real-{target_h}") for _ in range(4)]
    specs[3].extra = [f"task_options.batch_size={int(BATCH * slow)}", f"train.max_steps={int(steps / slow)}"]
    overrides = ["train.threads=1", "train.log_every_s=1", f"round.target_h={target_h}", *sets]
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    res = run_peers(specs, overrides, steps, workdir, timeout_s=900)
    return {**summarize(res["peers"], target_h, steps), "slow_factor_batch": slow,
            "wall_s": round(time.monotonic() - t0, 1), "loadavg_1m_start": round(load0, 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2)}


def targets(doc: dict[str, Any], add: Any) -> None:
    """The internet-rounds issue's H target: within 20% of ``round.target_h`` with one slow peer, no worker idle."""
    r = doc.get("cases", {}).get("paced")
    if not r:
        return
    target, dev = r.get("target_h"), r.get("deviation")
    idle = [p.get("paced_idle_s") for p in r.get("peers", [])]
    rates = [p.get("steps_per_s") for p in r.get("peers", [])]
    slower = (f" ({statistics.median(rates[:-1]) / rates[-1]:.1f}x slower per step)"
              if len(rates) > 1 and all(rates) else "")
    name = (f"H within 20% of round.target_h={target} with one peer on {r.get('slow_factor_batch')}x batches"
            f"{slower}, no worker idle")
    if dev is None or any(x is None for x in idle):
        add(name, None, None, "a peer reported no H or no idle time")
        return
    add(name, dev, abs(dev) <= 0.2 and max(idle) == 0,
        f"median peer's H {r['median_peer_h']} ({dev:+.1%}); worker idle {max(idle)} s at most")


def table(doc: dict[str, Any]) -> list[str]:
    """Markdown rows: each peer's H, rate and idle time in the paced case."""
    r = doc.get("cases", {}).get("paced")
    if not r:
        return []
    lines = ["", f"### Work pacing with one slow peer (4 daemons, loopback, round.target_h={r.get('target_h')})", "",
             "| peer | steps | steps/s | H mean (min–max) | worker idle s | rounds committed / held / aborted |",
             "|---|---|---|---|---|---|"]
    for p in r.get("peers", []):
        rate = p.get("steps_per_s")
        lines.append(f"| {p['index']} | {p.get('steps')} | {'n/a' if rate is None else f'{rate:.1f}'} | "
                     f"{p.get('h_mean')} ({p.get('h_min')}–{p.get('h_max')}) | {p.get('paced_idle_s')} | "
                     f"{p.get('rounds_committed')} / {p.get('rounds_held')} / {p.get('rounds_aborted')} |")
    lines.append(f"\nMedian peer's H {r.get('median_peer_h')} ({r.get('deviation')}); load 1m "
                 f"{r.get('loadavg_1m_start')} → {r.get('loadavg_1m_end')}. Command: `{doc.get('command', '')}`.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the cases, write the results, print a line per case."""
    ap = argparse.ArgumentParser(prog="python -m bench.paced_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-h", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500, help="inner steps of each fast peer")
    ap.add_argument("--slow", type=float, default=3.0, help="the slow peer's batch multiple")
    ap.add_argument("--only", action="append", choices=("paced", "clock"))
    ap.add_argument("--workdir", default="/tmp/peerd-paced-real")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="more config for every peer, e.g. mixing.mode=gossip")
    a = ap.parse_args(argv)
    args = argv if argv is not None else sys.argv[1:]
    doc: dict[str, Any] = {"command": " ".join(["python -m bench.paced_real", *args]),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cases": {}}
    for case in a.only or ["paced", "clock"]:
        h = a.target_h if case == "paced" else 0
        doc["cases"][case] = r = run_case(h, a.steps, a.slow, Path(a.workdir) / case, tuple(a.sets))
        print(json.dumps({"case": case, "median_peer_h": r["median_peer_h"], "deviation": r["deviation"],
                          "h_mean": [p["h_mean"] for p in r["peers"]],
                          "idle_s": [p["paced_idle_s"] for p in r["peers"]],
                          "steps_per_s": [p["steps_per_s"] and round(p["steps_per_s"], 2) for p in r["peers"]]}),
              flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
