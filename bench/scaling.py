"""Scaling: bytes per peer per round and round latency for 2, 4, 8 (and 16) daemons.

Each size is one ``peerd swarm`` on loopback with a tiny tinylm (so 16 torch processes fit on
two cores) and ``train.threads=1``. Bytes per round = a peer's summary ``tx_bytes`` /
its committed rounds, mean over peers (bytes sent in aborted rounds are included, so aborts
raise it). Round latency = the mean of the daemons'
``peerd_round_duration_seconds`` histograms (exchange wall time of a round, start to commit
or abort), scraped from every daemon's ``/metrics`` once a second while the swarm runs (the
last scrape before a daemon exits is kept).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.launch import wait_swarm

ROOT = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 32, "batch_size": 8}
# Clock rounds (round.target_h=0): every round exchanges, which is what bytes and latency per round measure.
OVERRIDES = ["train.threads=1", "round.target_h=0"] + [f"task_options.{k}={v}" for k, v in TINY.items()]


def _scrape(workdir: Path, stop: threading.Event, last: dict[int, dict[str, float]]) -> None:
    while not stop.wait(1.0):
        for rf in workdir.glob("peer-*.ready.json"):
            i = int(rf.name.split("-")[1].split(".")[0])
            try:
                addr = json.loads(rf.read_text())["metrics"]
                with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
            except (OSError, ValueError, KeyError):
                continue  # not up yet or already gone: keep the previous scrape
            vals = {}
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in ("peerd_round_duration_seconds_sum", "peerd_round_duration_seconds_count"):
                    vals[name.rsplit("_", 1)[1]] = float(value)
            if vals:
                last[i] = vals


def command(peers: int, steps: int) -> str:
    """The reproducing ``peerd swarm`` command of one size."""
    return " ".join(["peerd", "swarm", "--peers", str(peers), "--max-steps", str(steps)]
                    + [a for o in OVERRIDES for a in ("--set", o)])


def measure(peers: int, steps: int, workdir: Path) -> dict[str, Any]:
    """One swarm size."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in [*workdir.glob("peer-*.ready.json"), *workdir.glob("peer-*.summary.json")]:
        stale.unlink()
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "peerd", "swarm", "--peers", str(peers), "--max-steps", str(steps),
           "--summary", str(summary), "--workdir", str(workdir)] + [a for o in OVERRIDES for a in ("--set", o)]
    last: dict[int, dict[str, float]] = {}
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape, args=(workdir, stop, last), daemon=True)
    scraper.start()
    try:
        with open(workdir / "swarm.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            ending = wait_swarm(proc, workdir, 900 + 3 * steps)
    finally:
        stop.set()
        scraper.join(5)
    if not summary.exists():
        return {"peers": peers, "error": f"no summary (exit {proc.returncode}); logs in {workdir}"}
    ps = json.loads(summary.read_text())["peers"]
    per_round = [p["tx_bytes"] / p["rounds_committed"] for p in ps if p.get("rounds_committed")]
    count = sum(v.get("count", 0) for v in last.values())
    return {
        "peers": peers, "steps_per_peer": steps,
        "tx_bytes_per_peer_per_round": sum(per_round) / len(per_round) if per_round else None,
        "tx_bytes_per_peer": sum(p.get("tx_bytes", 0) for p in ps) / len(ps),
        "round_latency_s": sum(v.get("sum", 0) for v in last.values()) / count if count else None,
        "rounds_committed": max((p.get("rounds_committed") or 0) for p in ps),
        "rounds_aborted": max((p.get("rounds_aborted") or 0) for p in ps),
        "all_done": all(p.get("exit") == "done" for p in ps), "swarm_ending": ending,
        "command": command(peers, steps),
    }


def run(sizes: tuple[int, ...], steps: int, workdir: Path) -> list[dict[str, Any]]:
    """Every size, smallest first."""
    out = []
    for n in sizes:
        print(f"bench: scaling {n} peers ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        res = measure(n, steps, workdir / f"n{n}")
        res["bench_wall_s"] = round(time.monotonic() - t0, 1)
        print(f"bench: scaling {n}: {json.dumps(res)}", file=sys.stderr, flush=True)
        out.append(res)
    return out
