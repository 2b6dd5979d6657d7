"""How well one round's sparse contributions carry the members' mean outer gradient (no training run).

N tinylm replicas (``bench.factors``: seed 0, shard i of N) train ``--steps`` inner steps from the
same init; each member's outer gradient is its drift from the init. Every codec then goes through
the mixer's arithmetic once (each member encodes its own gradient, the mean of the decoded
contributions, the owners' re-encode of ``codec.reduced_spec``) and is compared with the exact
mean: relative L2 error, cosine and norm ratio. Also reported: the share of one member's squared
norm its per-block top-k holds. No error feedback: this is what a single round carries.

    python -m bench.sparse_probe --steps 100
"""

from __future__ import annotations

import argparse

import torch

from bench.factors import Replicas
from peerd.core import codec
from peerd.core.fragments import FragmentLayout

CASES = (("int4", 0.03, None), ("int8", 0.03, None), ("sparse", 0.03, None), ("sparse", 0.03, 0.12),
         ("sparse", 0.05, 0.05), ("sparse8", 0.05, 0.05), ("sparse", 0.1, 0.1), ("sparse", 0.2, 0.2),
         ("sparse", 0.4, 0.4), ("sparse8", 0.4, 0.4))


def _cmp(a: torch.Tensor, ref: torch.Tensor) -> str:
    cos = float(torch.nn.functional.cosine_similarity(a, ref, dim=0))
    return f"err {float((a - ref).norm() / ref.norm()):.3f} cos {cos:.3f} norm {float(a.norm() / ref.norm()):.3f}"


def main() -> None:
    """CLI: print one line per codec."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--peers", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = Replicas(a.peers)
    layout = FragmentLayout.build([(k, tuple(v.shape)) for k, v in r.params[0].items()], 1)
    init = layout.flatten(r.params[0], 0).clone()
    for _ in range(a.steps):
        for i in range(a.peers):
            r.step(i)
    deltas = [init - layout.flatten(p, 0) for p in r.params]
    mean = torch.stack(deltas).mean(0)
    print(f"{a.peers} members x {a.steps} inner steps; |mean| / mean |member| = "
          f"{float(mean.norm() / torch.stack([d.norm() for d in deltas]).mean()):.3f}")
    for name, dens, red in CASES:
        acc = torch.zeros_like(mean)
        for d in deltas:
            acc += codec.decode(codec.encode(d, name, 256, dens), name, d.numel(), 256, density=dens)
        acc /= a.peers
        rc, rd = codec.reduced_spec(name, dens, a.peers, 256, red)
        out = codec.decode(codec.encode(acc, rc, 256, rd), rc, acc.numel(), 256, density=rd)
        label = f"{name} d={dens}" + ("" if name not in codec.SPARSE else f" mean={'union' if red is None else red}")
        line = f"{label:28s} contributions: {_cmp(acc, mean)} | after the owners' re-encode: {_cmp(out, mean)}"
        if name in codec.SPARSE:
            x = deltas[0]
            nb = x.numel() // 256
            x2 = x[: nb * 256].view(nb, 256)
            k = codec.codec_sparse.per_block(256, dens)
            top = x2.abs().topk(k, dim=1).values
            line += f" | top-k holds {float((top ** 2).sum() / (x2 ** 2).sum()):.3f} of a member's energy"
        print(line, flush=True)


if __name__ == "__main__":
    main()
