"""Report: target verdicts, PNG plots and the generated table in BENCHMARKS.md.

Only the text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in BENCHMARKS.md is
rewritten; everything outside the markers is hand-written and kept. ``python -m bench.report``
regenerates table and plots from ``bench/results/latest.json`` without measuring anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
METHODS = ("ddp", "hivemind", "peerd_diloco_fp32", "peerd_diloco_int8", "peerd_diloco_int4", "peerd_gossip",
           "peerd_diloco_int8_round2s", "peerd_diloco_int8_paced")


def _num(x: Any, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with pass / miss / not measured and the numeric margin."""
    out: list[dict[str, Any]] = []
    conv = r.get("convergence", {})
    ddp, i8, hm = conv.get("ddp", {}), conv.get("peerd_diloco_int8", {}), conv.get("hivemind", {})

    def add(name: str, value: float | None, ok: bool | None, margin: str) -> None:
        out.append({"target": name, "measured": value, "verdict": "not measured" if ok is None else
                    ("pass" if ok else "miss"), "margin": margin})

    if ddp.get("final_eval_loss") and i8.get("final_eval_loss"):
        rel = (i8["final_eval_loss"] - ddp["final_eval_loss"]) / ddp["final_eval_loss"]
        add("diloco int8 eval loss within 2% of DDP", rel, rel <= 0.02,
            f"int8 is {rel:+.1%} vs DDP (limit +2.0%; {'inside' if rel <= 0.02 else f'{rel - 0.02:.1%} over'})")
    else:
        add("diloco int8 eval loss within 2% of DDP", None, None, "a run failed")
    if ddp.get("tx_bytes_per_peer") and i8.get("tx_bytes_per_peer"):
        f = ddp["tx_bytes_per_peer"] / i8["tx_bytes_per_peer"]
        add(">= 100x fewer bytes per peer than DDP (payload)", f, f >= 100,
            f"{f:.0f}x fewer" + ("" if f >= 100 else f" ({100 / f:.2f}x short)"))
    if ddp.get("wire_tx_bytes_per_peer") and i8.get("wire_tx_bytes_per_peer"):
        f = ddp["wire_tx_bytes_per_peer"] / i8["wire_tx_bytes_per_peer"]
        add(">= 100x fewer bytes per peer than DDP (on the wire)", f, f >= 100,
            f"{f:.0f}x fewer" + ("" if f >= 100 else f" ({100 / f:.2f}x short)"))
    if hm.get("final_eval_loss") and i8.get("final_eval_loss"):
        lower, faster = i8["final_eval_loss"] < hm["final_eval_loss"], i8["wall_s"] <= hm["wall_s"]
        d = i8["final_eval_loss"] - hm["final_eval_loss"]
        verdict = True if lower and faster else (False if not lower else None)
        add("lower eval loss than hivemind at equal wall time", d, verdict,
            f"loss {d:+.4f} vs hivemind, wall {i8['wall_s']:.0f}s vs {hm['wall_s']:.0f}s"
            + ("" if verdict is not None else " (lower loss but more wall time: equal-time not established)"))
    else:
        add("lower eval loss than hivemind at equal wall time", None, None, "a run failed")
    paced = conv.get("peerd_diloco_int8_paced", {})
    if ddp.get("final_eval_loss") and paced.get("final_eval_loss"):  # informative rows, same targets
        rel = (paced["final_eval_loss"] - ddp["final_eval_loss"]) / ddp["final_eval_loss"]
        add("(paced int8 variant) eval loss within 2% of DDP", rel, rel <= 0.02,
            f"{rel:+.1%} vs DDP" + ("" if rel <= 0.02 else f" ({rel - 0.02:.1%} over)"))
        if ddp.get("wire_tx_bytes_per_peer") and paced.get("wire_tx_bytes_per_peer"):
            f = ddp["wire_tx_bytes_per_peer"] / paced["wire_tx_bytes_per_peer"]
            add("(paced int8 variant) >= 100x fewer bytes than DDP (on the wire)", f, f >= 100,
                f"{f:.0f}x fewer" + ("" if f >= 100 else f" ({100 / f:.2f}x short)"))
        if hm.get("final_eval_loss"):
            d = paced["final_eval_loss"] - hm["final_eval_loss"]
            add("(paced int8 variant) lower eval loss than hivemind", d, d < 0,
                f"loss {d:+.4f} vs hivemind, wall {paced['wall_s']:.0f}s vs {hm['wall_s']:.0f}s")
    util = r.get("utilization", {}).get("loopback")
    add("utilization on loopback >= 0.97", util, None if util is None else util >= 0.97,
        "n/a" if util is None else f"{util:.3f} ({'+' if util >= 0.97 else ''}{util - 0.97:.3f} vs 0.97)")
    codec = r.get("codec", {})
    v = codec.get("int8_vs_memcpy")
    add("int8 encode+decode >= 0.3x memcpy", v, None if v is None else v >= 0.3,
        "n/a" if v is None else f"{v:.2f}x memcpy" + ("" if v >= 0.3 else f" ({0.3 / v:.2f}x short)"))
    if "rounds" in r:
        from bench import rounds

        rounds.targets(r["rounds"], add)
    t = r.get("transport", {})
    v = t.get("grpc_vs_raw")
    add("gRPC goodput >= 0.5x raw TCP", v, None if v is None else v >= 0.5,
        "n/a" if v is None else f"{v:.2f}x raw TCP" + ("" if v >= 0.5 else f" ({0.5 / v:.2f}x short)"))
    if r.get("frontier", {}).get("methods"):
        from bench import frontier

        for name, value, ok, margin in frontier.targets(r["frontier"]):
            add(name, value, ok, margin)
    if r.get("race", {}).get("methods"):
        from bench import wan_race

        wan_race.targets(r["race"], add)
    if r.get("defaults", {}).get("variants"):
        from bench import defaults_real

        defaults_real.targets(r["defaults"], add)
    if r.get("gossip", {}).get("compare"):
        from bench import gossip_real

        gossip_real.targets(r["gossip"], add)
    if r.get("paced", {}).get("cases"):
        from bench import paced_real

        paced_real.targets(r["paced"], add)
    return out


def plots(r: dict[str, Any], outdir: Path) -> list[Path]:
    """Write the PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    conv = {k: v for k, v in r.get("convergence", {}).items()
            if v.get("final_eval_loss") and v.get("tx_bytes_per_peer")}
    if conv:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, v in conv.items():
            ax.scatter(v["tx_bytes_per_peer"], v["final_eval_loss"], s=60)
            ax.annotate(f"{name}\n{v['wall_s']:.0f}s", (v["tx_bytes_per_peer"], v["final_eval_loss"]), fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="bytes sent per peer (payload; hivemind: wire)", ylabel="final eval loss",
               title="Convergence per byte, tinylm (same peers, same samples)")
        paths.append(outdir / "convergence.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    codec = r.get("codec", {})
    bars = {k[:-5]: v for k, v in codec.items() if k.endswith("_gbps") and v is not None and "_alloc" not in k}
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.barh(list(bars), list(bars.values()))
        ax.set(xlabel="GB/s of fp32 input (encode + decode, 1 thread)", title="Codec throughput")
        paths.append(outdir / "codecs.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    sizes = r.get("transport", {}).get("sizes", [])
    if sizes:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in [k for k in sizes[0] if k.endswith("_gbps")]:
            ax.plot([s["mb"] for s in sizes], [s[key] for s in sizes], marker="o", label=key)
        ax.set(xscale="log", xlabel="payload MiB", ylabel="GB/s", title="Transport goodput, loopback")
        ax.legend()
        paths.append(outdir / "transport.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    sc = [s for s in r.get("scaling", []) if s.get("tx_bytes_per_peer_per_round")]
    if sc:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
        a1.plot([s["peers"] for s in sc], [s["tx_bytes_per_peer_per_round"] / 1e3 for s in sc], marker="o")
        a1.set(xlabel="daemons", ylabel="kB sent per peer per round", xscale="log", ylim=(0, None))
        a2.plot([s["peers"] for s in sc], [s["round_latency_s"] or 0 for s in sc], marker="o")
        a2.set(xlabel="daemons", ylabel="round exchange latency (s)", xscale="log", ylim=(0, None))
        fig.suptitle("Scaling (tiny tinylm, loopback)")
        paths.append(outdir / "scaling.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    if r.get("race", {}).get("methods"):
        from bench import wan_race

        if wan_race.plot(r["race"], outdir / "wan_race.png"):
            paths.append(outdir / "wan_race.png")
    return paths


def table(r: dict[str, Any]) -> str:
    """Markdown for the generated part of BENCHMARKS.md."""
    meta = r.get("meta", {})
    lines = [f"Generated by `{meta.get('command', '?')}` on {meta.get('date', '?')} — {meta.get('machine', '?')}; "
             f"load average before/after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')}; "
             f"took {meta.get('duration_s', '?')} s.", "",
             "Sections, when each last ran: " + "; ".join(
                 f"{k} {v['date']} ({v['mode']}, {v['minutes']} min, load {v['load_1m_after']} after)"
                 for k, v in meta.get("sections", {}).items()), "", "### Targets", "",
             "| target | verdict | margin |", "|---|---|---|"]
    lines += [f"| {t['target']} | **{t['verdict']}** | {t['margin']} |" for t in r.get("targets", [])]
    lines += ["", "### Convergence (tinylm)", "",
              "| method | final eval loss | tx bytes/peer (payload) | wire bytes/peer | rounds | wall s | train s "
              "| command |",
              "|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        v = r.get("convergence", {}).get(name)
        if v is None:
            continue
        if "error" in v:
            lines.append(f"| {name} | error: {v['error'][:160]} | | | | | | `{v.get('command', '')}` |")
            continue
        lines.append(f"| {name} | {_num(v.get('final_eval_loss'))} | {_num(v.get('tx_bytes_per_peer'), '.3g')} | "
                     f"{_num(v.get('wire_tx_bytes_per_peer'), '.3g')} | "
                     f"{v.get('rounds_committed', v.get('averaging_rounds', 'n/a'))} | "
                     f"{_num(v.get('wall_s'), '.1f')} | "
                     f"{_num(v.get('train_s'), '.1f')} | `{v.get('command', '')}` |")
    u = r.get("utilization", {})
    lines += ["", "### Compute utilization (steps/s of 2 mixing peers ÷ 2 non-mixing peers, trained concurrently)",
              "",
              "| link | ratio | steps/s on | steps/s off | command |", "|---|---|---|---|---|"]
    for link in ("loopback", "tbf_100mbit", "tbf_20mbit"):
        d = u.get("detail", {}).get(link, {})
        lines.append(f"| {link} | {_num(u.get(link), '.3f')} | {_num(d.get('steps_per_s_on'), '.2f')} | "
                     f"{_num(d.get('steps_per_s_off'), '.2f')} | `{u.get('command', '')}` |"
                     if "error" not in d else f"| {link} | error: {d['error']} | | | |")
    c = r.get("codec", {})
    lines += ["", f"### Codec throughput (encode + decode, 1 thread, {c.get('numel', '?')} fp32, GB/s of input)",
              "", "| codec | GB/s (decode into a reused buffer) | vs memcpy | GB/s (fresh output) | vs clone |",
              "|---|---|---|---|---|", f"| memcpy (`copy_` / `clone`) | {_num(c.get('memcpy_gbps'), '.3f')} | 1 | "
              f"{_num(c.get('memcpy_clone_gbps'), '.3f')} | 1 |"]
    for name in ("fp32", "bf16", "int8", "int4"):
        lines.append(f"| {name} | {_num(c.get(f'{name}_gbps'), '.3f')} | {_num(c.get(f'{name}_vs_memcpy'), '.3f')} | "
                     f"{_num(c.get(f'{name}_alloc_gbps'), '.3f')} | {_num(c.get(f'{name}_alloc_vs_memcpy'), '.3f')} |")
    for name in ("hivemind_float16", "hivemind_uniform8", "hivemind_uniform8_patched"):
        err = c.get(f"{name}_error")
        gbps = c.get(f"{name}_gbps")
        vs_clone = gbps / c["memcpy_clone_gbps"] if gbps and c.get("memcpy_clone_gbps") else None
        lines.append(f"| {name} | — | — | {_num(gbps, '.3f')}" + (f" ({err})" if err else "")
                     + f" | {_num(vs_clone, '.3f')} |")
    lines.append(f"\nCommand: `{c.get('command', '')}`")
    t = r.get("transport", {})
    lines += ["", "### Transport goodput (loopback, GB/s)", "", "| payload MiB | raw TCP | peerd gRPC 1 stream | "
              "peerd gRPC 4 streams |", "|---|---|---|---|"]
    for s in t.get("sizes", []):
        lines.append(f"| {s['mb']} | {s['raw_tcp_gbps']:.3f} | {s.get('grpc_1stream_gbps', 0):.3f} | "
                     f"{s.get('grpc_4stream_gbps', 0):.3f} |")
    lines.append(f"\nPayload checksum (blake2b-128, once per side per transfer): "
                 f"{_num(t.get('checksum_gbps'), '.3f')} GB/s. Command: `{t.get('command', '')}`")
    lines += ["", "### Scaling (tiny tinylm, loopback)", "",
              "| daemons | bytes/peer/committed round | round latency s | rounds ok / aborted | command |",
              "|---|---|---|---|---|"]
    for s in r.get("scaling", []):
        if "error" in s:
            lines.append(f"| {s['peers']} | error: {s['error']} | | | |")
            continue
        lines.append(f"| {s['peers']} | {_num(s.get('tx_bytes_per_peer_per_round'), '.3g')} | "
                     f"{_num(s.get('round_latency_s'), '.3f')} | {s.get('rounds_committed')} / "
                     f"{s.get('rounds_aborted')} | `{s.get('command', '')}` |")
    if "rounds" in r:
        from bench import rounds

        lines += rounds.table(r["rounds"])
    if r.get("frontier", {}).get("methods"):
        from bench import frontier

        lines += [""] + frontier.table(r["frontier"])
    if r.get("race", {}).get("methods"):
        from bench import wan_race

        lines += wan_race.table(r["race"])
    if r.get("defaults", {}).get("variants"):
        from bench import defaults_real

        lines += defaults_real.table(r["defaults"])
    if r.get("gossip", {}).get("compare"):
        from bench import gossip_real

        lines += gossip_real.table(r["gossip"])
    if r.get("paced", {}).get("cases"):
        from bench import paced_real

        lines += paced_real.table(r["paced"])
    lines.append("\nPlots: " + ", ".join(f"[{p}](bench/results/{p})" for p in r.get("plots", [])))
    return "\n".join(lines)


def write_markdown(r: dict[str, Any], path: Path) -> None:
    """Replace the generated block of ``path`` (created from a stub when missing)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table(r)}\n{END}{tail}")


def regenerate(results_path: Path, markdown: Path) -> dict[str, Any]:
    """Recompute verdicts, plots and the markdown block from a results file (rewrites it)."""
    r = json.loads(results_path.read_text())
    r["targets"] = targets(r)
    r["plots"] = [p.name for p in plots(r, results_path.parent)]
    results_path.write_text(json.dumps(r, indent=2))
    write_markdown(r, markdown)
    return r


if __name__ == "__main__":
    res = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    regenerate(res, ROOT / "BENCHMARKS.md")
