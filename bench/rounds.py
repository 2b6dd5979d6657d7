"""The round protocol's targets side by side in one run: ``python -m bench --only rounds``.

Real ``peerd join`` daemons in network namespaces (:class:`bench.wan.WanEmulator`):

- **equal steps over the internet**: 4 daemons train exactly ``wan_steps`` inner steps each under
  the ``lan`` profile, then again under ``intercontinental`` (200 ms RTT, 20 Mbit/s, 0.5% loss),
  both with ``--exit-when-done`` (:func:`bench.wan_rounds.run`); once with clock rounds
  (``round.target_h=0``) and once with the defaults (work-paced, ``round.target_h`` 200). Reports
  the share of member-rounds committed and the final eval loss of each, so the two profiles
  compare at equal steps. ``wan_repeats`` runs each profile that many times, lan and
  intercontinental alternated (a drift in the box's load hits both), and compares the means:
  one run's final loss moves by up to 4% between two runs of the same profile (which steps the
  syncs land on), so a single pair cannot show a 1% band.
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

import statistics
import sys
from collections import Counter
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
        bench_cmd: str, wan_repeats: int = 1) -> dict[str, Any]:
    """Measure every part; a part that fails is recorded with its error and the others still run."""
    out: dict[str, Any] = {"command": bench_cmd, "wan": {}, "loopback": {}, "wan_repeats": wan_repeats}
    runs: dict[str, list[dict[str, Any]]] = {}
    for variant in ("", "_paced"):
        overrides = [] if variant else ["round.target_h=0"]  # paced: the defaults
        for k in range(wan_repeats):
            for profile in ("lan", "intercontinental"):
                name = profile + variant
                print(f"bench: rounds, {name} ({k + 1}/{wan_repeats}), 4 daemons x {wan_steps} steps ...",
                      file=sys.stderr, flush=True)
                runs.setdefault(name, []).append(wan_rounds.run(profile, 4, 60 + wan_steps * 1.5, 1, overrides,
                                                                workdir / "wan" / f"{name}-{k}", steps=wan_steps))
        for profile in ("lan", "intercontinental"):
            out["wan"][profile + variant] = summarize(runs[profile + variant], overrides)
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


def summarize(results: list[dict[str, Any]], overrides: list[str]) -> dict[str, Any]:
    """One profile's repeated runs: outcomes summed over runs, final eval loss per run and its mean."""
    per_peer = [p for res in results for p in res["per_peer"]]
    by_outcome = control_plane.outcomes_of(per_peer)
    committed, aborted = sum(res["committed"] for res in results), sum(res["aborted"] for res in results)
    losses = [res["mean_final_eval_loss"] for res in results]
    got = [x for x in losses if x is not None]
    errors = [res["error"] for res in results if res["error"]]
    return {
        "overrides": overrides, "runs": len(results), "committed": committed, "aborted": aborted,
        "committed_fraction": share(committed, aborted), "strict_committed_fraction": strict_share(by_outcome),
        "rounds_by_outcome": by_outcome, "abort_reasons": dict(sum((Counter(res["abort_reasons"]) for res in results),
                                                                   Counter())),
        "final_eval_loss": statistics.mean(got) if len(got) == len(losses) and got else None,
        "final_eval_losses": losses, "steps": [p["steps"] for p in per_peer],
        "strict_per_run": [strict_share(control_plane.outcomes_of(res["per_peer"])) for res in results],
        "wall_s": round(sum(res["wall_s"] for res in results), 1), "error": "; ".join(errors) or None,
        "loadavg_1m_end": results[-1]["loadavg_1m_end"],
    }


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
        n = min(ic.get("runs", 1), lan.get("runs", 1))
        what = (f"intercontinental ({label}) eval loss within 1% of lan at equal steps"
                + (f" (mean of {n} runs each)" if n > 1 else ""))
        if a and b:
            rel = (a - b) / b
            runs = "" if n < 2 else (f"; runs {', '.join(f'{x:.4f}' for x in ic['final_eval_losses'])} vs "
                                     f"{', '.join(f'{x:.4f}' for x in lan['final_eval_losses'])}")
            add(what, rel, abs(rel) <= 0.01, f"{a:.4f} vs {b:.4f} ({rel:+.2%}){runs}")
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
        setting = (f"4 daemons, {profile}, {(v.get('steps') or [0])[0]} steps {' '.join(v.get('overrides', []))}"
                   + (f" ({v['runs']} runs; losses {', '.join(f'{x:.4f}' for x in v['final_eval_losses'] if x)})"
                      if v.get("runs", 1) > 1 else ""))
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
