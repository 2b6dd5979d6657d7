"""``peerd simulate``: runs the gossip simulator's experiments and writes JSON plus PNG plots.

The experiments (:mod:`peerd.ops.simulate`) are pure; this module only sequences them, writes
``simulate.json`` and draws with matplotlib's ``Figure`` and the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from peerd.ops import simulate as sim

_SIZE_IN, _DPI = (12, 8), 110


def run_all(sizes: list[int], quick: bool = False) -> dict[str, Any]:
    """Every experiment the README quotes; ``quick`` shrinks round counts for smoke tests."""
    k = 4 if quick else 1
    t0 = time.monotonic()
    rounds = {"hypercube": 12, "random": 40 // k, "exponential": 40 // k, "ring3": 200 // k, "ring": 200 // k}
    out: dict[str, Any] = {"sizes": sizes, "quick": quick, "decay": sim.decay(sizes, rounds)}
    out["churn"] = [sim.churn(n, (60 if n <= 256 else 30) // k, "int8") for n in sizes]
    out["churn"].append(sim.churn(sizes[0], 60 // k, "int4", with_a2cid2=True))
    out["codec_floor"] = sim.codec_floor(64 if not quick else 16, 40 // k)
    out["a2cid2"] = sim.a2cid2_vs_plain([16, 32, 64] if not quick else [16], 300 // k)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def summary_lines(res: dict[str, Any]) -> list[str]:
    """Human-readable headline numbers (printed by the CLI, quoted in the README)."""
    lines = ["decay: topology n measured_rate theory_rate rounds_to_1e-5 (rounds until the consensus distance is "
             "1e-5 of its start; '>R' = not within the R rounds simulated, with the lowest fraction reached)"]
    for s in res["decay"]["series"]:
        th = "-" if s["theory_rate"] is None else f"{s['theory_rate']:.4f}"
        reached = s["rounds_to_1e-5"]
        if reached is None:
            reached = f">{s.get('rounds', '?')} (lowest {s.get('min_relative_distance', float('nan')):.1e})"
        lines.append(f"  {s['topology']:<12}{s['n']:>5}  {s['measured_rate']:.4f}  {th}  {reached}")
    for c in res["churn"]:
        lines.append(f"churn n={c['n']} {c['codec']} a2cid2={c['a2cid2']} events={c['joins_and_leaves']}: "
                     f"max rel mass drift {c['max_rel_mass_drift']:.2e}, weight {c['max_rel_weight_drift']:.2e}")
    for s in res["codec_floor"]["series"]:
        floor = f"floor {s['floor']:.3e}"
        if s.get("still_falling"):
            fix = "run without --quick" if res.get("quick") else "more rounds needed"
            floor = f"no floor yet: {s['floor']:.3e}, still falling after {len(s['distance']) - 1} rounds ({fix})"
        lines.append(f"floor {s['codec']:<5} anchored={s['anchored']!s:<5}: start {s['start']:.3e} {floor}")
    for s in res["a2cid2"]["series"]:
        lines.append(f"a2cid2 {s['topology']:<9} n={s['n']:<3} {s['variant']:<15} rounds to 10x: {s['rounds_to_10x']}")
    return lines


def _figure(rows: int, cols: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def decay_figure(res: dict[str, Any]) -> Any:
    """One panel per swarm size (no empty panels), measured decay solid, theory dotted."""
    sizes = res["sizes"]
    rows = 1 if len(sizes) <= 2 else 2
    fig, axes = _figure(rows, math.ceil(len(sizes) / rows))
    for ax in axes.flat[len(sizes):]:
        fig.delaxes(ax)  # an odd count leaves one cell: no empty panel
    for ax, n in zip(axes.flat, sizes, strict=False):
        for s in (s for s in res["decay"]["series"] if s["n"] == n):
            line = ax.semilogy(s["distance"], label=s["topology"])[0]
            if s["theory_rate"] is not None:
                d0 = s["distance"][0]
                ax.semilogy([d0 * s["theory_rate"] ** (r / 2) for r in range(len(s["distance"]))], ":",
                            color=line.get_color())
        ax.axvline(math.log2(n), color="grey", lw=0.5)
        ax.set(title=f"n = {n} (dotted: theory)", xlabel="round", ylabel="consensus distance",
               ylim=(1e-9, None))
        ax.legend(fontsize=8)
    return fig


def write(res: dict[str, Any], out: Path) -> list[Path]:
    """Write ``simulate.json`` and four PNG plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "simulate.json"]
    paths[0].write_text(json.dumps(res, indent=1))
    fig = decay_figure(res)
    paths.append(_save(fig, out / "consensus_decay.png"))
    fig, axes = _figure(1, 1)
    for c in res["churn"]:
        axes[0, 0].semilogy([max(x, 1e-18) for x in c["rel_mass_drift"]],
                            label=f"n={c['n']} {c['codec']}{' a2cid2' if c['a2cid2'] else ''}")
    axes[0, 0].axhline(1e-6, color="red", ls="--", label="1e-6 target")
    axes[0, 0].set(title="relative mass drift, random matching, a join + a leave every 5 rounds",
                   xlabel="round", ylabel="|sum z - sum z0| / |sum z0|")
    axes[0, 0].legend(fontsize=8)
    paths.append(_save(fig, out / "mass_drift.png"))
    fig, axes = _figure(1, 2)
    for ax, anchored in zip(axes[0], (True, False), strict=True):
        for s in (s for s in res["codec_floor"]["series"] if s["anchored"] == anchored):
            ax.semilogy(s["distance"], label=s["codec"])
        where = "anchor near the swarm" if anchored else "no anchor"
        ax.set(title=f"consensus floor, n={res['codec_floor']['n']}, {where}",
               xlabel="round", ylabel="consensus distance")
        ax.legend(fontsize=8)
    paths.append(_save(fig, out / "codec_floor.png"))
    fig, axes = _figure(1, 2)
    for ax, topo in zip(axes[0], ("ring", "hypercube"), strict=True):
        for s in (s for s in res["a2cid2"]["series"] if s["topology"] == topo):
            ax.semilogy(s["distance"], label=f"n={s['n']} {s['variant']}")
        ax.set(title=f"A2CiD2 vs plain gossip, one-peer {topo}", xlabel="round", ylabel="consensus distance")
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "a2cid2.png"))
    return paths
