"""Committed share of member-rounds in the simulation tier: ``python -m bench.sim_rounds``.

Runs the seeded scenarios of tests/sim on virtual time (the real round protocol, in-memory
network and DHT): ``latency`` (tests.sim.scenarios.latency_scenario: 50-150 ms one-way,
DHT operations of 0.05-0.45 s, 20-100 Mbit/s links), ``wide`` (random_scenario with latencies up
to 100 ms and DHT delays up to 0.2 s) and ``lan`` (random_scenario's defaults). For each:
member-rounds committed and aborted summed over peers, and the seeds whose invariants failed.
Results go to ``bench/results/sim_rounds.json`` under ``after`` (``--label`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tests.sim import invariants
from tests.sim.scenarios import latency_scenario, random_scenario
from tests.sim.world import Scenario, World

RESULTS = Path(__file__).resolve().parent / "results" / "sim_rounds.json"
GENERATORS: dict[str, Callable[[int], Scenario]] = {
    "latency": latency_scenario,
    "wide": lambda seed: random_scenario(seed, latencies=(0.001, 0.02, 0.05, 0.1), dht_delays=(0.01, 0.05, 0.2)),
    "lan": random_scenario,
}


def sweep(gen: Callable[[int], Scenario], seeds: range) -> dict[str, Any]:
    """Run every seed with the invariants checked; member-round totals and failing seeds."""
    committed = aborted = 0
    failures = []
    t0 = time.monotonic()
    for seed in seeds:
        w = World(gen(seed))
        w.checks.append(invariants.safety)
        try:
            w.run()
            invariants.liveness(w)
            invariants.termination(w)
            invariants.bounded_loss(w)
        except AssertionError as exc:
            failures.append({"seed": seed, "invariant": str(exc).splitlines()[0]})
        for p in [*w.peers.values(), *w.gone]:
            committed += p.counters.rounds_committed
            aborted += p.counters.rounds_aborted
    return {"seeds": [seeds.start, seeds.stop - 1], "committed": committed, "aborted": aborted,
            "committed_fraction": round(committed / max(1, committed + aborted), 4),
            "invariant_failures": failures, "wall_s": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    """Sweep each generator and store the result under ``--label``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--label", default="after")
    ap.add_argument("--only", choices=sorted(GENERATORS), action="append")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    for name in args.only or sorted(GENERATORS):
        res = sweep(GENERATORS[name], range(args.seeds))
        doc.setdefault(name, {})[args.label] = res
        print(name, json.dumps({k: v for k, v in res.items() if k != "invariant_failures"}),
              f"{len(res['invariant_failures'])} invariant failures")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
