"""The round protocol's targets side by side in one run: ``python -m bench --only rounds``.

Real ``peerd join`` daemons in network namespaces (:class:`bench.wan.WanEmulator`):

- **equal steps over the internet**: 4 daemons train exactly ``wan_steps`` inner steps each under
  the ``lan`` profile, then again under ``intercontinental`` (200 ms RTT, 20 Mbit/s, 0.5% loss),
  both with ``--exit-when-done`` (:func:`bench.wan_rounds.run`); once with clock rounds
  (``round.target_h=0``) and once with the defaults (work-paced, ``round.target_h`` 200). Reports
  the share of member-rounds committed and the final eval loss of each, so the two profiles
  compare at equal steps.
- **swarm size on loopback**: ``loopback_sizes`` daemons with zero added delay for
  ``loopback_s`` seconds (:func:`bench.control_plane.run`), with clock rounds
  (``round.target_h=0``, every round exchanges): the share of member-rounds committed and the
  DHT bytes each peer sends per second.

A member-round is one peer's part in one round. Two shares are reported: committed over
committed + aborted, and the strict one, which also counts as lost every round a ready peer
skipped because it was out of sync, had no plan, was left out of the plan, followed another
pacing target or waited for a laggard (``bench.control_plane.LOST_SKIPS``). Rounds skipped alone
(``too_few_peers``), with no reachable peer, held by work pacing (nothing due) or spent on a
finite run's end-of-run check (``finishing``) are not rounds anyone could have committed and are
left out of both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import control_plane, wan_rounds
from bench.control_plane import share, strict_share
from peerd.core.config import DEFAULT_TARGET_H

# Inner steps between syncs of a fragment in the paced runs (the daemon's default, round.target_h
# unset): the same H whatever the link, so the two profiles' losses at equal steps compare the same
# algorithm (with clock rounds the number of syncs per step follows each run's wall time).
PACED_H = DEFAULT_TARGET_H
# The control plane's bound, bytes each peer sends per second per live peer (clock rounds of 5 s).
# Per round a peer reads the view about once (a lookup: three copies of the N ~1 kB sealed records
# plus a neighbour list from each node it passes), stores one record at the three replicas per
# heartbeat, and looks the replicas up when one fails or a nearer node joins: about 2.5 kB/s per
# live peer on the wire here (bench.control_plane; BENCHMARKS.md, "The control plane, bounded").
# Linear in N per peer (N^2 in all): bounded, not constant; a swarm of thousands would need views
# that read a sample of the records.
DHT_BYTES_PER_PEER = 3000


def run(wan_steps: int, loopback_sizes: tuple[int, ...], loopback_s: float, workdir: Path,
        bench_cmd: str) -> dict[str, Any]:
    """Measure every part; a part that fails is recorded with its error and the others still run."""
    out: dict[str, Any] = {"command": bench_cmd, "wan": {}, "loopback": {}}
    for profile, variant in [(p, v) for v in ("", "_paced") for p in ("lan", "intercontinental")]:
        name = profile + variant
        overrides = [] if variant else ["round.target_h=0"]  # paced: the defaults
        print(f"bench: rounds, {name}, 4 daemons x {wan_steps} steps ...", file=sys.stderr, flush=True)
        res = wan_rounds.run(profile, 4, 60 + wan_steps * 1.5, 1, overrides, workdir / "wan" / name, steps=wan_steps)
        by_outcome = control_plane.outcomes_of(res["per_peer"])
        out["wan"][name] = {
            "overrides": overrides,
            "committed": res["committed"], "aborted": res["aborted"],
            "committed_fraction": res["committed_fraction"], "strict_committed_fraction": strict_share(by_outcome),
            "rounds_by_outcome": by_outcome, "abort_reasons": res["abort_reasons"],
            "final_eval_loss": res["mean_final_eval_loss"], "steps": [p["steps"] for p in res["per_peer"]],
            "wall_s": res["wall_s"], "error": res["error"], "loadavg_1m_end": res["loadavg_1m_end"],
        }
    for n in loopback_sizes:
        print(f"bench: rounds, {n} daemons on loopback for {loopback_s:g} s ...", file=sys.stderr, flush=True)
        try:
            # Clock rounds: every round exchanges, the protocol's load test. Under the default work
            # pacing a starved 16-peer swarm on 2 cores would hold most rounds and say little.
            res = control_plane.run(n, loopback_s, ["round.target_h=0"], workdir / "loopback" / str(n))
        except (RuntimeError, TimeoutError) as exc:
            out["loopback"][str(n)] = {"error": repr(exc)}
            continue
        out["loopback"][str(n)] = {
            "committed": res["rounds_committed"], "aborted": res["rounds_aborted"],
            "committed_fraction": share(res["rounds_committed"], res["rounds_aborted"]),
            "strict_committed_fraction": strict_share(res["rounds_by_outcome"]),
            "rounds_by_outcome": res["rounds_by_outcome"],
            "dht_tx_bytes_per_peer_per_s_mean": res["dht_tx_bytes_per_peer_per_s_mean"],
            "dht_tx_bytes_per_peer_per_s_max": res["dht_tx_bytes_per_peer_per_s_max"],
            "dht_ops_per_peer_per_round": res["dht_ops_per_peer_per_round"],
            "loadavg_1m_end": res["loadavg_1m_end"], "error": None,
        }
    return out


def targets(r: dict[str, Any], add: Any) -> None:
    """The internet-rounds issue's targets, from a ``rounds`` section (``add(name, value, ok, margin)``)."""
    wan = r.get("wan", {})
    for variant, label in (("", "clock rounds"), ("_paced", f"default, paced H={PACED_H}")):
        ic, lan = wan.get("intercontinental" + variant), wan.get("lan" + variant)
        if ic is None or lan is None:
            continue
        f, g = ic.get("strict_committed_fraction"), ic.get("committed_fraction")
        add(f"intercontinental ({label}): >= 95% of member-rounds commit", f, None if f is None else f >= 0.95,
            "n/a" if f is None else f"{f:.1%} strict, {g:.1%} of committed + aborted")
        a, b = ic.get("final_eval_loss"), lan.get("final_eval_loss")
        what = f"intercontinental ({label}) eval loss within 1% of lan at equal steps"
        if a and b:
            rel = (a - b) / b
            add(what, rel, abs(rel) <= 0.01, f"{a:.4f} vs {b:.4f} ({rel:+.2%})")
        else:
            add(what, None, None, "a run failed")
    for n, row in sorted(r.get("loopback", {}).items(), key=lambda kv: int(kv[0])):
        mean, bound = row.get("dht_tx_bytes_per_peer_per_s_mean"), DHT_BYTES_PER_PEER * int(n)
        add(f"DHT control plane at {n} daemons: mean bytes sent per peer per second <= {DHT_BYTES_PER_PEER} x {n}",
            mean, None if mean is None else mean <= bound,
            "n/a" if mean is None else f"{mean / 1e3:.1f} kB/s ({mean / int(n) / 1e3:.2f} kB/s per live peer; "
            f"bound {bound / 1e3:.0f} kB/s), max {row.get('dht_tx_bytes_per_peer_per_s_max', 0) / 1e3:.1f} kB/s")
    for n, need in (("8", 0.95), ("16", 0.80)):
        row = r.get("loopback", {}).get(n, {})
        f, g = row.get("strict_committed_fraction"), row.get("committed_fraction")
        add(f"{n} daemons on loopback: >= {need:.0%} of member-rounds commit", f, None if f is None else f >= need,
            "n/a" if f is None else f"{f:.1%} strict ({f - need:+.1%} vs {need:.0%}), {g:.1%} of committed + aborted")


def table(r: dict[str, Any]) -> list[str]:
    """Markdown lines for the report's rounds table."""
    lines = ["", "### Rounds (real daemons in network namespaces)", "",
             "| setting | member-rounds committed (strict) | of committed + aborted | final eval loss | "
             "DHT bytes/peer/s (mean / max) | load at end |", "|---|---|---|---|---|---|"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    for profile, v in r.get("wan", {}).items():
        loss = v.get("final_eval_loss")
        setting = f"4 daemons, {profile}, {(v.get('steps') or [0])[0]} steps {' '.join(v.get('overrides', []))}"
        lines.append(f"| {setting} | {pct(v.get('strict_committed_fraction'))} | "
                     f"{pct(v.get('committed_fraction'))} ({v.get('committed')}/"
                     f"{(v.get('committed') or 0) + (v.get('aborted') or 0)}) | "
                     f"{'n/a' if loss is None else f'{loss:.4f}'} | | {v.get('loadavg_1m_end', 0):.1f} |"
                     + (f" error: {v['error']}" if v.get("error") else ""))
    for n, v in r.get("loopback", {}).items():
        if v.get("error"):
            lines.append(f"| {n} daemons, loopback | error: {v['error']} | | | | |")
            continue
        lines.append(f"| {n} daemons, loopback | {pct(v.get('strict_committed_fraction'))} | "
                     f"{pct(v.get('committed_fraction'))} | | {v.get('dht_tx_bytes_per_peer_per_s_mean')} / "
                     f"{v.get('dht_tx_bytes_per_peer_per_s_max')} | {v.get('loadavg_1m_end', 0):.1f} |")
    lines.append(f"\nCommand: `{r.get('command', '')}`")
    return lines
