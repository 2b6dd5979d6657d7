"""Work-paced rounds in the simulation tier: ``python -m bench.work_paced``.

Four peers (the real PeerNode, round driver, DiLoCo mixer and worker on virtual time, in-memory
network and DHT; tests/sim) train a tiny task at 4 inner steps/s (``step_s`` 0.25 s) each, one of
them or all 3x slower, with 2 s rounds and 2 fragments. For each case it prints the target H, the
H measured per peer (inner steps between two of its committed syncs of a fragment; mean, min,
max), the median peer's H and its deviation from the target, the idle fraction of every worker
(step slots it was kept from training) and the rounds committed / held / aborted. Cases:

- ``paced_*``: ``round.target_h`` set (work pacing): H should stay on target on any hardware;
- ``clock_*``: no pacing (every round syncs ``round mod 2``): H follows the hardware;
- ``legacy_idle_one_slow``: ``train.max_steps_per_round`` (the old knob) idling the fast workers;
- ``paced_behind``: a target the network cannot sync that often: every round syncs, status says so;
- ``paced_one_slow_wan``: 50 ms links and 0.2 s DHT operations;
- ``paced_step_near_round``: inner steps of 1.9 s in 2 s rounds (a known weak spot, reported).

Writes ``bench/results/work_paced.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from tests.sim import invariants
from tests.sim.pacing import measure, median_h, paced_scenario
from tests.sim.world import Scenario, World

RESULTS = Path(__file__).resolve().parent / "results" / "work_paced.json"
TARGET_H = 30  # not a multiple of the fast peers' 8 steps per round: the round granularity shows
FAST, SLOW = 0.25, 0.75  # seconds per inner step


def cases(target: int) -> dict[str, tuple[int, Scenario]]:
    """Case name -> (target H or 0, scenario)."""
    one_slow = {3: 3.0}
    out: dict[str, tuple[int, Scenario]] = {
        "paced_one_slow": (target, paced_scenario(1, target, one_slow)),
        "paced_all_fast": (target, paced_scenario(2, target)),
        "paced_all_slow": (target, paced_scenario(3, target, step_s=SLOW, duration_s=240.0)),
        "paced_one_slow_wan": (target, paced_scenario(4, target, one_slow, latency_s=0.05, jitter_s=0.01,
                                                      dht_delay_s=0.2, bandwidth_bps=50e6)),
        "paced_behind": (8, paced_scenario(5, 8, one_slow)),
        # Steps about as long as rounds (a big model): a snapshot waits for a step boundary and may miss
        # the collect deadline, so a member contributes nothing that round and carries its steps on.
        "paced_step_near_round": (16, paced_scenario(8, 16, step_s=1.9, duration_s=300.0)),
    }
    for name, slow, step in (("one_slow", one_slow, FAST), ("all_fast", {}, FAST), ("all_slow", {}, SLOW)):
        out[f"clock_{name}"] = (0, Scenario(seed=6, peers=4, duration_s=80.0, step_s=step, slow=dict(slow)))
    # The legacy knob can only lower H, by idling: 4 steps per round gives H ~8 (a fragment every 2nd
    # round) where the fast workers could do 8 per round. Work pacing cannot reach 8 with 2 s rounds
    # and 2 fragments (16 at most): ``paced_behind`` shows what it does instead.
    out["legacy_idle_one_slow"] = (0, Scenario(seed=7, peers=4, duration_s=80.0, step_s=FAST, slow=dict(one_slow),
                                               config={"train.max_steps_per_round": 4}))
    return out


def run_case(target: int, sc: Scenario) -> dict[str, Any]:
    """Run one scenario with the safety invariant checked; what it measured."""
    t0 = time.monotonic()
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    invariants.liveness(w)
    paces = measure(w)
    outcomes = Counter(row[2] for x in w.log for row in x.rows.values())
    med = median_h(paces)
    behind = [p.node.driver.pacing.status()["behind"] for p in w.peers.values() if p.node.driver.pacing.decision]
    return {
        "target_h": target or None, "median_h": round(med, 2),
        "deviation": round(med / target - 1, 4) if target else None,
        "peers": [{"peer": p.peer, "step_s": p.step_s, "mean_h": round(p.mean_h, 2),
                   "min_h": min(p.h, default=None), "max_h": max(p.h, default=None), "syncs": len(p.h),
                   "idle_fraction": round(p.idle_fraction, 4), "steps": p.trained} for p in paces],
        "max_idle_fraction": round(max(p.idle_fraction for p in paces), 4),
        "rounds": {"committed": outcomes.get("ok", 0), "held": outcomes.get("not_due", 0),
                   "other": sum(v for k, v in outcomes.items() if k not in ("ok", "not_due"))},
        "pace_behind": any(behind) if behind else None,
        "virtual_s": sc.duration_s, "wall_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every case, print a table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-h", type=int, default=TARGET_H)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    results = {name: run_case(t, sc) for name, (t, sc) in cases(args.target_h).items()}
    for name, r in results.items():
        hs = " ".join(f"{p['mean_h']:.1f}" for p in r["peers"])
        dev = f"{r['deviation']:+.1%}" if r["deviation"] is not None else "   -  "
        print(f"{name:<22} target H {r['target_h'] or '-':>4}  median H {r['median_h']:6.2f} ({dev})  "
              f"per peer [{hs}]  max idle {r['max_idle_fraction']:.1%}  rounds {r['rounds']}"
              + ("  BEHIND" if r["pace_behind"] else ""))
    paced = [r for n, r in results.items() if n.startswith("paced_") and n not in ("paced_behind",
                                                                                  "paced_step_near_round")]
    summary = {"max_abs_deviation": round(max(abs(r["deviation"]) for r in paced), 4),
               "max_idle_fraction_paced": max(r["max_idle_fraction"] for r in paced),
               "median_h_unpaced": {n: results[f"clock_{n}"]["median_h"] for n in ("one_slow", "all_fast", "all_slow")},
               "max_idle_fraction_legacy": results["legacy_idle_one_slow"]["max_idle_fraction"]}
    print(f"summary: {summary}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m bench.work_paced", "summary": summary,
                                    "cases": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
