"""Rounds under a WAN profile: ``python -m bench.wan_rounds --profile intercontinental --peers 4 --seconds 120``.

Runs ``--peers`` real ``peerd join`` daemons, each in its own network namespace of a
:class:`bench.wan.WanEmulator` (transport and DHT bound to the namespace's address, all
bootstrapping from the first peer), for ``--seconds`` after the last one is ready, then SIGTERMs
them (each leaves, evaluates and writes its ``--summary``).

With ``--steps N`` every peer trains exactly N inner steps and leaves on its own once the swarm
has finished (``--exit-when-done``), so two profiles' final eval losses compare at equal steps;
``--seconds`` then only bounds the run. The peers then also hold training until all of them see
each other (``--wait-for-peers``), as ``peerd swarm`` does: started one by one, the first peer
trained alone until the others had joined, about 130 steps ahead of them on ``lan`` and 300
under ``intercontinental`` (a DHT join over 200 ms links is slower), and that head start, not
the rounds, moved the two profiles' losses apart.

Reports member-rounds committed and aborted (summed over peers, from the summaries), abort
reasons (from the ``round_aborted`` log events), steps and final eval loss per peer, and the
forwarder's link counters. The result is stored under its profile in
``bench/results/wan_rounds.json`` (other profiles' entries are kept; equal-step runs go under
``equal_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.launch import start_wan_daemons
from bench.wan import PROFILES, WanEmulator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "wan_rounds.json"


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{name}"' in line:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == name:
                out.append(ev)
    return out


def run(profile: str, peers: int, seconds: float, seed: int, overrides: list[str], workdir: Path,
        steps: int = 0) -> dict[str, Any]:
    """One run; returns the result document (also on a peer's failure, with ``error`` set)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(workdir / "state"),
           "PEERD_SECURITY__SECRET": secrets.token_hex(16)}
    procs: list[subprocess.Popen[bytes]] = []
    error = None
    t0 = time.monotonic()
    with WanEmulator(peers, profile, seed=seed) as wan:
        try:
            finite = [f"train.max_steps={steps}"] if steps else []
            start_wan_daemons(wan, peers, workdir, [f"run_id=wan-{profile}", *finite, *overrides],
                              ["--exit-when-done", "--wait-for-peers", str(peers)] if steps else [], env, procs,
                              ready_timeout_s=180)
            ready_s = time.monotonic() - t0
            print(f"wan_rounds: {peers} peers ready after {ready_s:.0f}s; running {seconds:.0f}s", file=sys.stderr,
                  flush=True)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                dead = [i for i, p in enumerate(procs) if p.poll() is not None]
                if steps and len(dead) == len(procs):
                    break  # every peer finished its steps and left
                if dead and not steps:
                    raise RuntimeError(f"peers {dead} exited early (logs in {workdir})")
                time.sleep(1.0)
            else:
                if steps:
                    raise RuntimeError(f"peers still training after {seconds:.0f}s (logs in {workdir})")
            links = wan.stats()["links"]
        except (RuntimeError, TimeoutError) as exc:
            error, links = repr(exc), {}
        finally:
            for p in procs:  # leave: each evaluates and writes its summary
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + 90
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
    per_peer, reasons = [], Counter()
    for i in range(len(procs)):
        sf = workdir / f"peer-{i}.summary.json"
        s = json.loads(sf.read_text())["peers"][0] if sf.exists() else {}
        aborts = _events(workdir / f"peer-{i}.log", "round_aborted")
        reasons.update(str(ev.get("reason")) for ev in aborts)
        per_peer.append({k: s.get(k) for k in ("steps", "rounds_committed", "rounds_aborted", "rounds_by_outcome",
                                               "final_eval_loss", "initial_eval_loss", "tx_bytes", "rx_bytes",
                                               "exit")})
    committed = sum(p["rounds_committed"] or 0 for p in per_peer)
    aborted = sum(p["rounds_aborted"] or 0 for p in per_peer)
    losses = [p["final_eval_loss"] for p in per_peer if p["final_eval_loss"] is not None]
    return {
        "profile": PROFILES[profile].as_dict(), "peers": peers, "seconds": seconds, "seed": seed,
        "overrides": overrides, "steps": steps, "committed": committed, "aborted": aborted,
        "committed_fraction": round(committed / (committed + aborted), 3) if committed + aborted else None,
        "abort_reasons": dict(reasons), "mean_final_eval_loss": sum(losses) / len(losses) if losses else None,
        "per_peer": per_peer, "links": links, "wall_s": round(time.monotonic() - t0, 1), "error": error,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_1m_end": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, merge into the results file, print the figures."""
    ap = argparse.ArgumentParser(prog="python -m bench.wan_rounds", description=__doc__)
    ap.add_argument("--profile", default="intercontinental", choices=sorted(PROFILES))
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="train exactly this many steps per peer, then leave")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra peerd config override")
    ap.add_argument("--workdir", default="/tmp/peerd-wan-rounds")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    res = run(a.profile, a.peers, a.seconds, a.seed, a.overrides, Path(a.workdir) / a.profile, a.steps)
    res["command"] = "python -m bench.wan_rounds " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("runs" if not a.steps else "equal_steps", {})[a.profile] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("committed", "aborted", "committed_fraction", "abort_reasons",
                                          "mean_final_eval_loss", "error")}))
    return 0 if res["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
