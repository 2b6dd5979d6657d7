"""Loss against bytes: 4 peers x 2000 inner steps, every method through peerd's real mixer math.

One process, like ``bench.factors`` (whose ``run`` does the training): N tinylm replicas with the
shards and init ``peerd swarm`` uses, the real ``FragmentLayout``, wire codecs with error feedback,
the owners' re-encode of the mean (``codec.reduced_spec``, with owner error feedback when a
reduced density is set, as ``mixing.reduced_density``) and ``OuterState.apply_outer_step``. No
network: rounds are instantaneous and never lost, so this is the algorithm's frontier, not the
daemon's (lost rounds and streaming delay are measured by ``bench.factors``).

Every method is scored on the same held-out windows. ``share`` is the part of DDP's gain over
``solo`` (one replica, same steps, the whole corpus, as a one-peer ``peerd swarm``) a method
captures; ``solo_shard0`` (one replica on shard 0 of N) is reported beside it. ``bytes`` is the
payload one peer sends over the run (DDP: a ring all-reduce of fp32 gradients every step), and
``bytes_vs_ddp`` DDP's bytes divided by it.

``peerd_default`` is the daemon's defaults (int8, 2 fragments, outer lr 1, no momentum) at H = 100
inner steps between two syncs of a fragment, the interval ``peerd swarm --peers 4`` ran at over
2000 steps with its default 5 s rounds (issue 12: about every 105 steps). The daemon has no fixed
H; ``mixing`` variants at other H say what a faster round would give.

    nice -n 10 python -m bench.frontier --steps 2000 --out bench/results/frontier.json
    python -m bench.frontier --plot-only   # redraw bench/results/frontier.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from bench.factors import OPTIONS, Method, _score, run

D = Method()  # diloco, fp32, P=1, H=20, outer lr 1, no momentum
DEFAULT = replace(D, codec="int8", P=2, H=100)  # the daemon's mixing defaults at its measured interval


def grid() -> dict[str, Method]:
    """Every method of the full run, cheapest first within its group."""
    g: dict[str, Method] = {"solo": Method(kind="solo"), "solo_shard0": Method(kind="solo_shard"),
                            "ddp": Method(kind="ddp")}
    g["local_H20"] = Method(kind="local", H=20)
    g["local_H100"] = Method(kind="local", H=100)
    g["peerd_default"] = DEFAULT
    g["int8_P2_H20"] = replace(DEFAULT, H=20)
    g["int8_P2_H50"] = replace(DEFAULT, H=50)
    g["int4_P2_H50"] = replace(DEFAULT, H=50, codec="int4")
    g["int8_P2_H100_lr0.8_mu0.5"] = replace(DEFAULT, outer_lr=0.8, momentum=0.5)
    g["sparse3_union_H20"] = replace(D, codec="sparse", density=0.03)  # the mean as the exact union, int8
    for dens, h in ((0.1, 20), (0.05, 20), (0.03, 20), (0.01, 10)):
        g[f"sparse{round(dens * 100)}_r{round(dens * 100)}_H{h}"] = replace(D, codec="sparse", density=dens,
                                                                           reduced=dens, H=h)
    return g


# ``python -m bench`` full mode: the references, the default and the sparse points (~25 min on a
# shared 2-core box at nice 10); the rest with ``--only`` or without ``--core``.
CORE = ("solo", "solo_shard0", "ddp", "local_H20", "local_H100", "peerd_default", "int8_P2_H20",
        "sparse3_union_H20", "sparse3_r3_H20", "sparse1_r1_H10")


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Final eval loss against payload bytes per peer (log x), one labelled point per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ms = results["methods"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, v in ms.items():
        if v["bytes"] <= 0:  # solo sends nothing: a horizontal reference line
            ax.axhline(v["final"], ls="--", lw=0.8, color="grey")
            ax.annotate(name, (1e5, v["final"]), fontsize=7, color="grey", va="bottom")
            continue
        color = {"ddp": "black", "local": "tab:green"}.get(v["method"]["kind"], "tab:blue")
        if v["method"]["codec"].startswith("sparse"):
            color = "tab:red"
        ax.scatter(v["bytes"], v["final"], color=color, s=18)
        ax.annotate(name, (v["bytes"], v["final"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("payload bytes sent per peer over the run (log)")
    ax.set_ylabel("final held-out loss")
    ax.set_title(f"{results['peers']} peers x {results['steps']} steps, tinylm (bench.frontier)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def measure(steps: int, peers: int, names: list[str], out: Path, log: bool = True) -> dict[str, Any]:
    """Train the named methods (resuming a file of the same steps and peers) and write JSON and plot."""
    torch.set_num_threads(1)
    g = grid()
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("steps") != steps or results.get("peers") != peers:
        results = {"steps": steps, "peers": peers, "options": OPTIONS, "methods": {}}
    t0 = time.perf_counter()
    for name in names:
        res = run(g[name], steps, peers)
        results["methods"][name] = {"method": asdict(g[name]), **res}
        _score(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        if log:
            v = results["methods"][name]
            print(f"{name:26s} final={v['final']:.4f} share={v.get('share')} bytes={v['bytes']:.3g} "
                  f"x{v.get('bytes_vs_ddp', '-')} ({v['wall_s']:.0f}s)", flush=True)
    results["wall_s_this_run"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    return results


def main() -> None:
    """CLI: run the grid, ``--core`` of it or ``--only`` some of it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--core", action="store_true", help="only the methods python -m bench runs")
    ap.add_argument("--only", default="", help="comma-separated method names")
    ap.add_argument("--out", type=Path, default=Path("bench/results/frontier.json"))
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()
    if a.plot_only:
        print(plot(json.loads(a.out.read_text()), a.out.with_suffix(".png")))
        return
    names = [s for s in a.only.split(",") if s] or (list(CORE) if a.core else list(grid()))
    unknown = [s for s in names if s not in grid()]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(grid())}")
    measure(a.steps, a.peers, names, a.out)


if __name__ == "__main__":
    main()
