"""Whether the worker thread's niceness (``train.worker_nice``) lets a CPU-starved swarm keep its rounds.

    python -m bench.worker_nice --peers 16 --seconds 60 --reps 2 --nice 0 10

Runs :func:`bench.control_plane.run` (``peers`` daemons, each in its own namespace, zero added
delay, clock rounds so every round exchanges) once per niceness value, alternating the values rep
after rep so that the box's load drifts over all of them alike. Reports per run the member-rounds
committed and aborted, the strict share (:func:`bench.control_plane.strict_share`: skipped rounds a ready peer
could have taken count as lost) and the mean inner steps per peer (what the workers gave up), then
the mean of each value. Results go to ``bench/results/worker_nice.json`` (``--out`` to change).

Why it matters: 16 daemons on 2 cores run 16 event loops, 16 workers and 16 p2pd processes. A
round's deadlines are the loops'; with the workers at the same priority a loop that must verify a
plan offer or push a reduced shard waits behind training, and one owner that misses a plan aborts
the round for everyone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import control_plane
from bench.control_plane import strict_share

RESULTS = control_plane.ROOT / "bench" / "results" / "worker_nice.json"


def steps_per_peer(workdir: Path, peers: int) -> float | None:
    """Mean inner steps per peer from the summaries ``control_plane.run`` leaves in ``workdir``."""
    steps = []
    for i in range(peers):
        sf = workdir / f"peer-{i}.summary.json"
        if sf.exists():
            steps.append(json.loads(sf.read_text())["peers"][0].get("steps") or 0)
    return round(statistics.fmean(steps), 1) if steps else None


def main(argv: list[str] | None = None) -> int:
    """Run every value rep after rep, print each run and the means, write the results file."""
    ap = argparse.ArgumentParser(prog="python -m bench.worker_nice", description=__doc__)
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    ap.add_argument("--workdir", default="/tmp/peerd-worker-nice")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for rep in range(a.reps):
        for nice in a.nice:
            wd = Path(a.workdir) / f"{nice}-{rep}"
            res = control_plane.run(a.peers, a.seconds, ["round.target_h=0", f"train.worker_nice={nice}"], wd)
            row = {"nice": nice, "rep": rep, "committed": res["rounds_committed"], "aborted": res["rounds_aborted"],
                   "strict": strict_share(res["rounds_by_outcome"]), "steps_per_peer": steps_per_peer(wd, a.peers),
                   "rounds_by_outcome": res["rounds_by_outcome"], "loadavg_1m_end": res["loadavg_1m_end"],
                   "time": res["time"]}
            runs.append(row)
            print(json.dumps({k: row[k] for k in ("nice", "rep", "committed", "aborted", "strict", "steps_per_peer",
                                                  "loadavg_1m_end")}), flush=True)
    means = {}
    for nice in a.nice:
        rows = [r for r in runs if r["nice"] == nice]
        means[str(nice)] = {k: round(statistics.fmean(r[k] for r in rows if r[k] is not None), 4)
                            for k in ("committed", "aborted", "strict", "steps_per_peer")}
    cmd = (f"python -m bench.worker_nice --peers {a.peers} --seconds {a.seconds:g} --reps {a.reps} --nice "
           + " ".join(map(str, a.nice)) + ("" if Path(a.out) == RESULTS else f" --out {a.out}"))
    Path(a.out).write_text(json.dumps({"command": cmd, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs,
                                   "means": means}, indent=2) + "\n")
    print(json.dumps(means), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
