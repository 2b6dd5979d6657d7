"""``python -m bench.wan``: what the emulator delivers per profile, and what the forwarder costs.

Measures, from inside the namespaces, the median TCP RTT of every profile, the goodput of one
bulk TCP flow under each shaped profile, the datagram loss of ``intercontinental``, and the
4-host ring (0->1->2->3->0, four flows at once) at 25 Mbit/s per host (100 Mbit/s aggregate) and
unshaped, with the forwarder's CPU use (fraction of one core) during each ring. Writes
``bench/results/wan_selfcheck.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.wan import PROFILES, WanEmulator
from bench.wan import measure as m

OUT = Path(__file__).resolve().parents[1] / "results" / "wan_selfcheck.json"
RING = [(0, 1), (1, 2), (2, 3), (3, 0)]


def _ring(profile: Any) -> dict[str, Any]:
    with WanEmulator(4, profile, seed=1) as wan:
        c0, t0 = m.cpu_s(wan.forwarder_pid), time.monotonic()  # type: ignore[arg-type]
        rates = m.throughput_mbit(wan, RING, seconds=5.0)
        cpu = (m.cpu_s(wan.forwarder_pid) - c0) / (time.monotonic() - t0)  # type: ignore[arg-type]
    return {"goodput_mbit": [round(r, 1) for r in rates], "aggregate_mbit": round(sum(rates), 1),
            "forwarder_cpu_fraction": round(cpu, 2)}


def main() -> int:
    """Measure and write the results."""
    res: dict[str, Any] = {"profiles": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "loadavg_1m_start": os.getloadavg()[0]}
    for name, p in PROFILES.items():
        entry: dict[str, Any] = {"rtt_target_ms": p.rtt_ms}
        with WanEmulator(2, p, seed=1) as wan:
            entry["rtt_median_ms"] = round(m.median(m.rtt_ms(wan, n=10 if p.rtt_ms > 100 else 20)), 2)
            if p.up_mbit:
                entry["rate_target_mbit"] = p.up_mbit
                entry["goodput_mbit"] = round(m.throughput_mbit(wan, [(0, 1)], seconds=6.0, warmup_s=2.0)[0], 1)
            if p.loss:
                entry["loss_target"] = p.loss
                entry["loss_measured"] = round(m.loss_fraction(wan, n=20000, pps=2000), 4)
        res["profiles"][name] = entry
        print(name, entry, file=sys.stderr, flush=True)
    res["ring_25mbit_per_host"] = _ring(PROFILES["lan"].with_(name="ring25", up_mbit=25.0, down_mbit=25.0))
    res["ring_unshaped"] = _ring("lan")
    print(json.dumps({k: res[k] for k in ("ring_25mbit_per_host", "ring_unshaped")}), file=sys.stderr)
    res["command"] = "python -m bench.wan"
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
