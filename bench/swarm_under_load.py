"""``peerd swarm`` on a busy box: the README demo, repeated, while other processes hog every core.

Main's demo livelocked for 20 minutes on a 2-core box that was running two other jobs. This
bench starts ``--hogs`` CPU-bound processes (pure Python loops, bounded by the bench's own
lifetime), then runs ``peerd swarm --peers 4 --max-steps 300`` ``--runs`` times in a row and
records, per run: exit code, wall time, and each peer's revision, state hash, rounds committed
and aborted and final eval loss. A run passes when it exits 0 with every peer at one revision
and hash. Results go to ``bench/results/swarm_under_load.json``.

    python -m bench.swarm_under_load --runs 3 --hogs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


def run_once(i: int, workdir: Path, extra: list[str], timeout_s: float) -> dict:
    """One ``peerd swarm`` run and what its summary says."""
    summary = workdir / f"run-{i}.json"
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", "4", "--max-steps", "300", "--summary", str(summary),
           *extra]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        code, tail = res.returncode, (res.stdout + res.stderr)[-2000:]
    except subprocess.TimeoutExpired as exc:
        code, tail = -1, f"timed out after {timeout_s}s: {str(exc.stdout or '')[-1500:]}"
    wall = time.monotonic() - t0
    peers = json.loads(summary.read_text())["peers"] if summary.exists() else []
    ends = {(p["revision"], p["state_hash"]) for p in peers}
    return {"run": i, "exit": code, "wall_s": round(wall, 1), "identical": len(ends) == 1 and len(peers) == 4,
            "passed": code == 0 and len(ends) == 1 and len(peers) == 4,
            "peers": [{k: p.get(k) for k in ("revision", "state_hash", "rounds_committed", "rounds_aborted",
                                             "final_eval_loss", "exit")} for p in peers],
            "output_tail": tail if code != 0 else ""}


def main(argv: list[str] | None = None) -> int:
    """Run the demo ``--runs`` times under ``--hogs`` busy processes; exit 1 unless every run passed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=2, help="CPU-bound processes kept running meanwhile")
    ap.add_argument("--timeout-s", type=float, default=1200.0, help="per run (the swarm's own limit is 1195 s)")
    ap.add_argument("--set", action="append", default=[], help="extra --set for peerd swarm")
    ap.add_argument("--out", default="bench/results/swarm_under_load.json")
    args = ap.parse_args(argv)
    extra = [x for kv in args.set for x in ("--set", kv)]
    limit = args.runs * args.timeout_s + 60
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(limit=limit)]) for _ in range(args.hogs)]
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="peerd-load-") as tmp:
            for i in range(args.runs):
                results.append(run_once(i, Path(tmp), extra, args.timeout_s))
                r = results[-1]
                print(f"run {i}: exit {r['exit']}, {r['wall_s']} s, identical={r['identical']}, "
                      f"revisions={sorted({p['revision'] for p in r['peers']})}", flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    doc = {"command": "python -m bench.swarm_under_load " + " ".join(argv or sys.argv[1:]),
           "hogs": args.hogs, "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
           "passed": sum(r["passed"] for r in results), "runs": results}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"{doc['passed']}/{len(results)} runs finished with every peer at one revision and hash")
    return 0 if doc["passed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
