"""Compute utilization: a peer's training steps/s with mixing on / the same with mixing off.

Both halves run *at the same time*, so they see the same background load (the benchmark
machine is shared, and load that drifts between two sequential halves moved the ratio by 5x in
trials). Four ``peerd join`` processes train together, ``train.threads=1`` each: two form one
swarm and mix (mixing on); two others are each alone in their own run (different ``run_id``, no
bootstrap), so no round ever forms (mixing off). Every process is its own session, and with the
kernel's autogroup scheduling each session gets an equal CPU share however many threads it
runs: the work a mixing peer's network thread does (encode, hash, gRPC) and its GIL hold come
out of that peer's own share, which is exactly the cost being measured.

Steps/s: each peer logs ``status`` events with its step and a wall-clock timestamp every
second; rates are taken over the window in which all four were training (after the last one
started, before the first one finished), so no peer ever runs with fewer competitors.

Links: ``loopback`` (everyone on 127.0.0.1) or, for ``tbf_*``, the two mixing peers each in
their own network namespace joined by a veth pair shaped to the rate in both directions
(``bench.netns``); the non-mixing peers stay on the host.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import netns
from bench.launch import PeerSpec, run_peers

OVERRIDES = ["train.threads=1", "train.log_every_s=1"]


def _series(log: Path) -> list[tuple[float, int]]:
    """(unix time, step) of every status event in a peer's JSON log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"status"' not in line:
            continue
        try:
            ev = json.loads(line)
            out.append((datetime.fromisoformat(ev["timestamp"]).timestamp(), int(ev["step"])))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out)


def _step_at(series: list[tuple[float, int]], t: float) -> float:
    for (t0, s0), (t1, s1) in zip(series, series[1:], strict=False):
        if t0 <= t <= t1:
            return s0 + (s1 - s0) * (t - t0) / (t1 - t0) if t1 > t0 else s1
    raise ValueError("time outside the series")


def _window_rates(series: list[list[tuple[float, int]]], steps: int) -> tuple[list[float], float]:
    start = max(next(t for t, s in ser if s > 0) for ser in series)
    end = min(max(t for t, s in ser if s < steps) for ser in series)
    if end - start < 3:
        raise ValueError(f"common training window too short ({end - start:.1f}s)")
    return [(_step_at(ser, end) - _step_at(ser, start)) / (end - start) for ser in series], end - start


def measure(link: str, steps: int, workdir: Path, repeats: int = 1) -> dict[str, Any]:
    """One link kind (``loopback``, ``tbf_100mbit``, ``tbf_20mbit``); returns the ratio and its parts."""
    rate_mbit = {"loopback": None, "tbf_100mbit": 100, "tbf_20mbit": 20}[link]
    if rate_mbit is not None and netns.available() is not None:
        return {"error": f"network namespaces unavailable: {netns.available()}"}
    on_all: list[float] = []
    off_all: list[float] = []
    detail: list[dict[str, Any]] = []
    for rep in range(repeats):
        with netns.Lab() as lab:
            hosts, prefixes = ["127.0.0.1", "127.0.0.1"], [[], []]
            if rate_mbit is not None:
                ns = [lab.namespace(), lab.namespace()]
                hosts, prefixes = list(lab.link(ns[0], ns[1], rate_mbit)), [lab.prefix(n) for n in ns]
            specs = [PeerSpec(hosts[0], prefixes[0], f"util-{link}-on", 0),
                     PeerSpec(hosts[1], prefixes[1], f"util-{link}-on", 0),
                     PeerSpec("127.0.0.1", [], f"util-{link}-off-2", None),
                     PeerSpec("127.0.0.1", [], f"util-{link}-off-3", None)]
            print(f"bench: utilization {link} (repeat {rep + 1}/{repeats}) ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            wd = workdir / f"{link}-{rep}"
            summary = run_peers(specs, OVERRIDES, steps, wd)
        try:
            rates, window = _window_rates([_series(wd / f"peer-{i}.log") for i in range(4)], steps)
        except (ValueError, StopIteration) as exc:
            detail.append({"repeat": rep, "error": f"{exc!r}; logs in {wd}"})
            continue
        on_all += rates[:2]
        off_all += rates[2:]
        detail.append({"repeat": rep, "steps_per_s_on": rates[:2], "steps_per_s_off": rates[2:],
                       "window_s": round(window, 1), "loadavg_1m_before": load,
                       "rounds_committed_on": [p.get("rounds_committed") for p in summary["peers"][:2]],
                       "tx_bytes_on": [p.get("tx_bytes") for p in summary["peers"][:2]]})
    if not on_all:
        return {"error": "no common training window measured", "detail": detail}
    on, off = sum(on_all) / len(on_all), sum(off_all) / len(off_all)
    return {"ratio": on / off, "steps_per_s_on": on, "steps_per_s_off": off, "repeats": repeats,
            "steps_per_peer": steps, "detail": detail}


def run(steps: int, workdir: Path, links: tuple[str, ...], repeats: int = 1) -> dict[str, Any]:
    """Every link kind; ``{link: ratio}`` plus ``detail``."""
    out: dict[str, Any] = {"detail": {}}
    for link in links:
        res = measure(link, steps, workdir, repeats)
        out[link] = res.get("ratio")
        out["detail"][link] = res
    return out
