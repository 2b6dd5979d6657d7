"""DHT control-plane bytes per peer: ``python -m bench.control_plane --peers 4 8 --seconds 60``.

Each ``peerd join`` daemon runs in its own namespace of a :class:`bench.wan.WanEmulator` with
zero added delay and no shaping (loopback-like: the forwarder adds ~0.1 ms), so every byte a
peer sends crosses the forwarder, which counts bytes per TCP/UDP port pair. A packet is DHT
traffic when it leaves a peer's DHT port or goes to one (the port in its ready file's
``dht_maddrs``), gRPC traffic likewise with its ``grpc`` port; anything else is ``other``. Bytes
are counted as IP packets (headers included) over a window of ``--seconds`` that starts once
every peer is ready, and reported per peer and per second, as sent. Results go to
``bench/results/control_plane.json`` under the peer count.
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
from pathlib import Path
from typing import Any

from bench.launch import start_wan_daemons
from bench.wan import PROFILES, WanEmulator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "control_plane.json"
LOOPBACK = PROFILES["lan"].with_(name="loopback", rtt_ms=0.0)


def _tx_by_kind(stats: dict[str, Any], dht: dict[int, int], grpc: dict[int, int], n: int) -> list[dict[str, int]]:
    out = [{"dht": 0, "grpc": 0, "other": 0} for _ in range(n)]
    for src, sport, dst, dport, nbytes in stats.get("by_port", []):
        kind = ("dht" if sport == dht[src] or dport == dht[dst] else
                "grpc" if sport == grpc[src] or dport == grpc[dst] else "other")
        out[src][kind] += nbytes
    return out


# Skips that count as lost member-rounds in the strict share: a ready peer could have committed
# (see bench/rounds.py's docstring for what is left out and why).
LOST_SKIPS = ("skipped:not_in_sync", "skipped:awaiting_sync", "skipped:no_plan", "skipped:not_in_plan",
              "skipped:pace_mismatch")


def share(committed: int, lost: int) -> float | None:
    """``committed / (committed + lost)`` to 4 places; None when both are 0."""
    return round(committed / (committed + lost), 4) if committed + lost else None


def strict_share(by_outcome: dict[str, int]) -> float | None:
    """Committed member-rounds over committed + aborted + lost skips (``LOST_SKIPS``); None when there were none."""
    lost = sum(v for k, v in by_outcome.items() if k.startswith("aborted:") or k in LOST_SKIPS)
    return share(by_outcome.get("committed:ok", 0), lost)


def outcomes_of(summaries: list[dict[str, Any]]) -> dict[str, int]:
    """Rounds by ``outcome:reason`` summed over peers' summary entries (``rounds_by_outcome``)."""
    out: dict[str, int] = {}
    for s in summaries:
        for k, v in (s.get("rounds_by_outcome") or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def ops_per_round(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """DHT operations by kind per round a peer looked at, averaged over peers (each over its whole run).

    The kinds are the daemon's (``dht_ops`` in its summary): ``store`` a heartbeat, ``get`` a view
    read, ``get_plans`` / ``store_plan`` a round's plan, ``lookup`` the peers key's replicas.
    """
    per_peer = []
    for s in summaries:
        rounds = sum((s.get("rounds_by_outcome") or {}).values())
        if rounds:
            per_peer.append({op: n / rounds for op, n in (s.get("dht_ops") or {}).items()})
    ops = sorted({op for p in per_peer for op in p})
    return {op: round(sum(p.get(op, 0.0) for p in per_peer) / len(per_peer), 2) for op in ops} if per_peer else {}


def run(peers: int, seconds: float, overrides: list[str], workdir: Path) -> dict[str, Any]:
    """One swarm of ``peers``; bytes per peer per second by kind over the window."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(workdir / "state"),
           "PEERD_SECURITY__SECRET": secrets.token_hex(16)}
    procs: list[subprocess.Popen[bytes]] = []
    with WanEmulator(peers, LOOPBACK, count_ports=True) as wan:
        try:
            ready = start_wan_daemons(wan, peers, workdir, ["run_id=control-plane", *overrides], [], env, procs)
            dht = {i: int(r["dht_maddrs"][0].split("/tcp/")[1].split("/")[0]) for i, r in enumerate(ready)}
            grpc = {i: int(r["grpc"].rsplit(":", 1)[1]) for i, r in enumerate(ready)}
            before, t0 = _tx_by_kind(wan.stats(), dht, grpc, peers), time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a peer exited early (logs in {workdir})")
                time.sleep(1.0)
            after, dt = _tx_by_kind(wan.stats(), dht, grpc, peers), time.monotonic() - t0
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + 90
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
    rates = [{k: round((a[k] - b[k]) / dt) for k in a} for a, b in zip(after, before, strict=True)]
    summaries = []
    for i in range(peers):
        sf = workdir / f"peer-{i}.summary.json"
        summaries.append(json.loads(sf.read_text())["peers"][0] if sf.exists() else {})
    by_outcome = outcomes_of(summaries)
    committed = sum(s.get("rounds_committed") or 0 for s in summaries)
    aborted = sum(s.get("rounds_aborted") or 0 for s in summaries)
    dht_rates = [r["dht"] for r in rates]
    lags = [s.get("loop_lag_s") or {} for s in summaries]
    p99 = sorted(x["p99"] for x in lags if "p99" in x)
    return {"peers": peers, "window_s": round(dt, 1), "tx_bytes_per_s": rates,
            "dht_ops_per_peer_per_round": ops_per_round(summaries),
            "dht_tx_bytes_per_peer_per_s_mean": round(sum(dht_rates) / peers),
            "dht_tx_bytes_per_peer_per_s_max": max(dht_rates), "rounds_committed": committed,
            "rounds_aborted": aborted, "rounds_by_outcome": by_outcome, "overrides": overrides,
            "strict_committed_fraction": strict_share(by_outcome),
            "loadavg_1m_end": os.getloadavg()[0],
            # How late each daemon's event loop woke (peerd/core/looplag.py): a starved box, not the network
            "loop_lag_p99_s": {"median_peer": p99[len(p99) // 2] if p99 else None,
                               "worst_peer": p99[-1] if p99 else None,
                               "max": max((x.get("max", 0.0) for x in lags), default=None)},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    """Run each peer count, merge into the results file, print the DHT figures."""
    ap = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__)
    ap.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra peerd config override")
    ap.add_argument("--workdir", default="/tmp/peerd-control-plane")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (merged by peer count)")
    a = ap.parse_args(argv)
    out: Path = a.out
    doc = json.loads(out.read_text()) if out.exists() else {}
    for n in a.peers:
        res = run(n, a.seconds, a.overrides, Path(a.workdir) / str(n))
        res["command"] = f"python -m bench.control_plane --peers {n} --seconds {a.seconds:g}" + "".join(
            f" --set {o}" for o in a.overrides)
        doc.setdefault("runs", {})[str(n)] = res
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps({k: res[k] for k in ("peers", "dht_tx_bytes_per_peer_per_s_mean",
                                              "dht_tx_bytes_per_peer_per_s_max", "rounds_committed",
                                              "rounds_aborted", "strict_committed_fraction", "rounds_by_outcome",
                                              "loop_lag_p99_s", "dht_ops_per_peer_per_round")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
