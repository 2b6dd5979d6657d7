"""Factor study of peerd's DiLoCo mixing, in one process: which part of the algorithm costs what.

N tinylm replicas (the shards and init ``peerd swarm`` uses: seed 0, shard i of N) train side by
side in one process and sync through peerd's real pieces: ``FragmentLayout`` (fragments),
``codec.encode_with_feedback`` / ``codec.reduced_spec`` (wire codecs, error feedback, the owner's
re-encode of the mean) and ``OuterState.apply_outer_step`` (outer SGD / Nesterov). The worker merge
rule is the one of ``peerd/train/worker.py`` ("merge" command): ``theta <- theta_outer_new + (theta_now -
theta_snapshot)``. No network: a round is instantaneous, except that ``delay`` inner steps can run
between the snapshot and the merge, as they do while a real round is in flight.

Baselines in the same run: ``solo`` (one replica, same steps) and ``ddp`` (one model, the gradient
averaged over the N shards' batches every step: what an all-reduce gives). Every method is scored
on the same held-out windows; ``share`` is the part of DDP's gain over solo a method captures.

    nice -n 10 python -m bench.factors --steps 1000 --out bench/results/factors.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from peerd.core import codec
from peerd.core.fragments import FragmentLayout, shard_bounds
from peerd.core.state import OuterState
from peerd.train.tasks.base import TaskContext
from peerd.train.tasks.tinylm import tinylm

# The test suite's FAST model (tests/conftest.py): ~5x faster than the default tinylm on CPU.
OPTIONS = {"d_model": 48, "n_layers": 2, "seq_len": 48, "max_corpus_bytes": 1_000_000, "eval_batches": 32}


@dataclass(frozen=True)
class Method:
    """One configuration; ``kind``: solo, solo_shard, ddp, local (parameter averaging) or diloco.

    ``solo_shard`` trains one replica on shard 0 of N; ``solo`` one on the whole corpus.
    """

    kind: str = "diloco"
    H: int = 20  # inner steps between two syncs of the same fragment
    P: int = 1  # fragments; a round every H / P steps syncs one of them
    codec: str = "fp32"
    density: float = 0.03
    # sparse codecs: the owners' mean top-k at this density with owner error feedback
    # (mixing.reduced_density); None: the exact union support, int8 values
    reduced: float | None = None
    error_feedback: bool = True
    outer_lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = True
    delay: int = 0  # inner steps between snapshot and merge (a round in flight)
    merge: str = "merge"  # merge (peerd's rule) | replace (discard the in-flight progress)
    adam: str = "local"  # at a sync: keep local moments | average them | reset them
    # What is not sent (codec error, unselected entries): kept in the residual and sent later
    # (peerd) | kept in the worker's own parameters (merge theta_new - unsent; no residual)
    unsent: str = "residual"
    # Error-feedback decay (SparseLoCo's beta): the residual is scaled by this before the next
    # round's outer gradient is added to it; 1.0 keeps everything (peerd's rule). With
    # unsent="worker": the share of its unsent progress a member keeps in its parameters.
    ef_decay: float = 1.0
    owner_ef_decay: float = 1.0  # the same for the owners' residual of the reduced mean
    # Entries the owners' re-encoded mean leaves out: in the owner's residual (peerd) | "workers": each
    # contributor keeps its sent value of them in its worker, the owner the rest of its residual
    owner_drop: str = "owner"


def _grid() -> dict[str, Method]:
    d = Method()
    g: dict[str, Method] = {"solo": Method(kind="solo"), "ddp": Method(kind="ddp")}
    for h in (10, 20, 50):
        g[f"local_H{h}"] = Method(kind="local", H=h)
    g["diloco_fp32_H20"] = d  # the same math through peerd's code: must match local_H20
    g["diloco_fp32_P2_H20"] = replace(d, P=2)
    g["diloco_int8_P2_H20"] = replace(d, P=2, codec="int8")  # peerd's default codec and P
    g["delay10_merge_H20"] = replace(d, delay=10)
    g["delay10_replace_H20"] = replace(d, delay=10, merge="replace")
    g["int8_H20"] = replace(d, codec="int8")
    g["sparse3_H20"] = replace(d, codec="sparse")
    g["sparse3_noEF_H20"] = replace(d, codec="sparse", error_feedback=False)
    g["sparse10_H20"] = replace(d, codec="sparse", density=0.1)
    g["sparse3_H10"] = replace(d, codec="sparse", H=10)
    g["sparse8_3_H20"] = replace(d, codec="sparse8")  # int8 values instead of 2-bit
    g["sparse10_H50"] = replace(d, codec="sparse", density=0.1, H=50)
    g["sparse3_keep_H20"] = replace(d, codec="sparse", unsent="worker")
    g["sparse3_keep_H10"] = replace(d, codec="sparse", unsent="worker", H=10)
    g["int8_keep_P2_H20"] = replace(d, codec="int8", unsent="worker", P=2)
    for h in (20, 50):
        for lr, mu in ((0.7, 0.9), (1.0, 0.5)):
            g[f"outer_lr{lr}_mu{mu}_H{h}"] = replace(d, H=h, outer_lr=lr, momentum=mu)
    for lr, mu in ((1.0, 0.3), (0.8, 0.5), (1.3, 0.0)):
        g[f"outer_lr{lr}_mu{mu}_H20"] = replace(d, outer_lr=lr, momentum=mu)
    g["adam_average_H20"] = replace(d, adam="average")
    g["adam_reset_H20"] = replace(d, adam="reset")
    return g


class Replicas:
    """N tinylm replicas with their optimizers (identical init, shard i each)."""

    def __init__(self, n: int) -> None:
        self.tasks = [tinylm(TaskContext(seed=0, shard=i, num_shards=n, device=torch.device("cpu"),
                                         options=OPTIONS)) for i in range(n)]
        self.opts = [t.make_optimizer(t.model.parameters()) for t in self.tasks]
        self.params = [dict(t.model.named_parameters()) for t in self.tasks]

    def step(self, i: int) -> None:
        """One inner AdamW step of replica i on its own shard."""
        t = self.tasks[i]
        loss = t.loss(t.model, t.batches.next_batch())
        self.opts[i].zero_grad(set_to_none=True)
        loss.backward()
        self.opts[i].step()

    def adam(self, names: tuple[str, ...], how: str) -> None:
        """Adam moments of the named parameters after a sync: keep (local), average or reset them."""
        if how == "local":
            return
        for name in names:
            states = [opt.state[p[name]] for opt, p in zip(self.opts, self.params, strict=True)]
            if not states[0]:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                new = torch.stack([s[key] for s in states]).mean(0) if how == "average" else None
                for s in states:
                    s[key].copy_(new) if new is not None else s[key].zero_()

    def evaluate(self, flat: list[torch.Tensor] | None, layout: FragmentLayout | None, i: int = 0) -> float:
        """Held-out loss of replica i, or of a copy carrying the given fragments."""
        t = self.tasks[i]
        if flat is None:
            return t.evaluate(t.model)
        model = copy.deepcopy(t.model)
        named = dict(model.named_parameters())
        for p, theta in enumerate(flat):
            layout.unflatten_into(named, p, theta)
        return t.evaluate(model)


def _mean_params(r: Replicas, layout: FragmentLayout) -> list[torch.Tensor]:
    return [torch.stack([layout.flatten(p, f) for p in r.params]).mean(0) for f in range(layout.num_fragments)]


def _round_bytes(m: Method, numel: int, n: int) -> float:
    """Payload bytes one member sends in one round (average over members): contributions + its reduced shard."""
    bounds = shard_bounds(numel, n, 256)
    red, red_d = codec.reduced_spec(m.codec, m.density, n, 256, m.reduced)
    total = 0
    for i in range(n):
        total += sum(codec.encoded_size(m.codec, b - a, 256, m.density) for j, (a, b) in enumerate(bounds) if j != i)
        total += (n - 1) * codec.encoded_size(red, bounds[i][1] - bounds[i][0], 256, red_d)
    return total / n


def run(m: Method, steps: int, n: int) -> dict[str, Any]:
    """Train one method; returns its final losses and payload bytes per peer."""
    t0 = time.perf_counter()
    r = Replicas(1 if m.kind == "solo" else n)
    trained = 1 if m.kind in ("solo", "solo_shard") else n
    names = [(k, tuple(v.shape)) for k, v in r.params[0].items()]
    layout = FragmentLayout.build(names, 1 if m.kind != "diloco" else m.P)
    sent = 0.0
    if m.kind == "ddp":
        model, opt = r.tasks[0].model, r.opts[0]
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            for t in r.tasks:  # mean of the N shards' losses: the all-reduced gradient
                (t.loss(model, t.batches.next_batch()) / n).backward()
            opt.step()
        numel = sum(p.numel() for p in model.parameters())
        return {"final": r.evaluate(None, None), "bytes": steps * 2 * (n - 1) / n * 4 * numel,
                "wall_s": time.perf_counter() - t0}
    state = OuterState(layout, [layout.flatten(r.params[0], p) for p in range(layout.num_fragments)])
    residuals = [[torch.zeros(k) for k in layout.numels] for _ in r.tasks]
    # Owner error feedback: membership is fixed here, so every block of a fragment has the same
    # owner in every round and one residual per fragment is the union of the owners' residuals.
    owner_res = [torch.zeros(k) for k in layout.numels]
    inflight: list[tuple] = []  # (merge at step, fragment, snapshots, new outer theta, unsent kept by workers)
    every = max(1, m.H // layout.num_fragments)
    for step in range(1, steps + 1):
        for i in range(trained):
            r.step(i)
        if m.kind in ("solo", "solo_shard"):
            continue
        if m.kind == "local" and step % m.H == 0:
            mean = _mean_params(r, layout)
            for p in r.params:
                layout.unflatten_into(p, 0, mean[0])
            r.adam(layout.names[0], m.adam)
            sent += _round_bytes(replace(m, codec="fp32"), layout.numels[0], n)
        if m.kind == "diloco" and step % every == 0:
            f = (step // every) % layout.num_fragments
            snaps = [layout.flatten(p, f) for p in r.params]
            outer = state.theta(f)
            acc, kept, sent_vals = torch.zeros_like(outer), [], []
            for i, snap in enumerate(snaps):  # plan order, equal sample weights, as Diloco._reduce
                res = residuals[i][f] if m.error_feedback and m.unsent == "residual" else None
                if res is not None and m.ef_decay != 1.0:
                    res = res * m.ef_decay
                payload, unsent = codec.encode_with_feedback(outer - snap, res, m.codec, 256, m.density)
                if m.unsent == "residual":
                    residuals[i][f] = unsent
                # unsent="worker" with ef_decay < 1: the member keeps only that share of what it did
                # not send and takes the outer state for the rest (pulled towards the consensus)
                kept.append((unsent * m.ef_decay if m.ef_decay != 1.0 else unsent) if m.unsent == "worker" else 0.0)
                sent_vals.append(codec.decode(payload, m.codec, outer.numel(), 256, density=m.density))
                acc.add_(sent_vals[-1] * 16.0)
            acc.div_(16.0 * n)
            red, red_d = codec.reduced_spec(m.codec, m.density, n, 256, m.reduced)
            feedback = m.reduced is not None and m.codec in codec.SPARSE  # as Diloco._owner_feedback
            old = owner_res[f] * m.owner_ef_decay if m.owner_ef_decay != 1.0 else owner_res[f]
            if feedback:
                acc.add_(old)
            mean = codec.decode(codec.encode(acc, red, 256, red_d), red, acc.numel(), 256, density=red_d)
            if feedback and m.owner_drop == "workers":  # what the mean does not carry goes back
                dropped = mean == 0
                owner_res[f] = torch.where(dropped, old, acc - mean)
                kept = [k + c * dropped for k, c in zip(kept, sent_vals, strict=True)]
            elif feedback:
                owner_res[f] = acc - mean
            theta = state.apply_outer_step(f, mean, m.outer_lr, m.momentum, m.nesterov, state.revision)
            inflight.append((step + m.delay, f, snaps, theta, kept))
            sent += _round_bytes(m, layout.numels[f], n)
        for item in [x for x in inflight if x[0] == step]:
            _, f, snaps, theta, kept = item
            for p, snap, own in zip(r.params, snaps, kept, strict=True):  # peerd/train/worker.py "merge"
                now, base = layout.flatten(p, f), theta - own  # own: this worker's unsent progress (or 0)
                layout.unflatten_into(p, f, base + (now - snap) if m.merge == "merge" else base)
            r.adam(layout.names[f], m.adam)
            inflight.remove(item)
    out: dict[str, Any] = {"worker0": r.evaluate(None, None), "bytes": sent}
    if m.kind not in ("solo", "solo_shard"):
        out["mean_of_workers"] = r.evaluate(_mean_params(r, layout), layout)
    if m.kind == "diloco":
        out["outer"] = r.evaluate([state.theta(f) for f in range(layout.num_fragments)], layout)
        if m.unsent == "residual" and m.error_feedback and m.codec != "fp32":
            # Diagnostic only: the outer state plus the progress still waiting in the members'
            # residuals (what a final dense flush would add); ``final`` stays the outer state.
            pending = [state.theta(f) - torch.stack([res[f] for res in residuals]).mean(0) - owner_res[f]
                       for f in range(layout.num_fragments)]
            out["outer_plus_pending"] = r.evaluate(pending, layout)
    # What peerd reports: the outer state (leave.py "finalize"); local SGD: its last average.
    out["final"] = out.get("outer", out.get("mean_of_workers", out["worker0"]))
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    """CLI: run the grid (or ``--only`` some of it) and write a JSON table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/factors.json"))
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="fold these result files into --out, run nothing")
    args = ap.parse_args()
    if args.merge:  # runs split over several processes: same steps and peers, one table
        results = json.loads(args.merge[0].read_text())
        for extra in args.merge[1:]:
            more = json.loads(extra.read_text())
            assert (more["steps"], more["peers"]) == (results["steps"], results["peers"]), extra
            results["methods"].update(more["methods"])
        _score(results)
        args.out.write_text(json.dumps(results, indent=1))
        return
    torch.set_num_threads(1)
    grid = _grid()
    names = [s for s in args.only.split(",") if s] or list(grid)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results.get("steps") != args.steps or results.get("peers") != args.peers:
        results = {"steps": args.steps, "peers": args.peers, "options": OPTIONS, "methods": {}}
    for name in names:
        res = run(grid[name], args.steps, args.peers)
        results["methods"][name] = {"method": asdict(grid[name]), **res}
        _score(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"{name:28s} final={res['final']:.4f} share={results['methods'][name].get('share')} "
              f"bytes={res['bytes']:.3g} ({res['wall_s']:.0f}s)", flush=True)


def _score(results: dict[str, Any]) -> None:
    ms = results["methods"]
    if "solo" not in ms or "ddp" not in ms:
        return
    solo, ddp = ms["solo"]["final"], ms["ddp"]["final"]
    for v in ms.values():
        v["share"] = round((solo - v["final"]) / (solo - ddp), 3)
        if v["bytes"]:
            v["bytes_vs_ddp"] = round(ms["ddp"]["bytes"] / v["bytes"], 1)


if __name__ == "__main__":
    main()
