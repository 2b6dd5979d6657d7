"""In-process gossip simulator: 16...1024 virtual peers, the daemon's mixing code, no network (pure).

A :class:`SimSwarm` holds every virtual peer's mass ``z`` (float64), weight ``w`` and, with
A2CiD2, momentum copy ``zt``. A round encodes each peer's message with the real wire codec
(:func:`peerd.mixing.gossip.mixing.encode`), pairs peers with :mod:`peerd.mixing.gossip.topology` over the
hash-ordered ids, and applies :func:`peerd.mixing.gossip.mixing.pair_delta` on both sides, exactly as
two daemons do. Joins clone a donor and split its mass; graceful leaves hand mass to a partner.
The experiment functions return plain dicts; :mod:`peerd.ops.simreport` writes them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from peerd.mixing.gossip import a2cid2, mixing, topology

RUN = "sim"


@dataclass
class SimSwarm:
    """Virtual peers: ids (hash-ordered each round), mass, weights, optional A2CiD2 copies."""

    ids: list[str]
    z: torch.Tensor  # (n, d) float64
    w: torch.Tensor  # (n, 1) float64
    anchor: torch.Tensor  # (d,) float32, shared compression reference
    zt: torch.Tensor | None = None
    next_id: int = 0
    log: list[str] = field(default_factory=list)

    @classmethod
    def random(cls, n: int, d: int, seed: int, spread: float = 1.0, anchored: bool = True,
               with_a2cid2: bool = False) -> SimSwarm:
        """``n`` peers at ``anchor + spread * N(0, 1)`` (anchor ``N(0, 1)``, or 0 without anchor)."""
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(d, generator=g)
        z = base.double() + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
        anchor = base if anchored else torch.zeros(d)
        return cls([f"p{i}" for i in range(n)], z, torch.ones(n, 1, dtype=torch.float64), anchor,
                   z.clone() if with_a2cid2 else None, n)

    @property
    def n(self) -> int:
        """Number of live virtual peers."""
        return len(self.ids)

    def mass(self) -> tuple[torch.Tensor, float]:
        """Total mass and total weight (what every committed exchange conserves)."""
        return self.z.sum(0), float(self.w.sum())

    def distance(self) -> float:
        """Consensus distance (RMS over peers of the L2 distance to the weighted mean)."""
        return mixing.consensus_distance(self.z, self.w)

    def join(self, donor: int) -> None:
        """A new peer clones ``donor`` and takes half of its mass (never a fresh init)."""
        zd, wd = mixing.split(self.z[donor], float(self.w[donor]))
        self.z = torch.cat([self.z, zd[None]])
        self.z[donor] = zd
        self.w = torch.cat([self.w, torch.tensor([[wd]], dtype=torch.float64)])
        self.w[donor] = wd
        if self.zt is not None:
            half = self.zt[donor] * 0.5
            self.zt[donor] = half
            self.zt = torch.cat([self.zt, half[None]])
        self.ids.append(f"p{self.next_id}")
        self.next_id += 1

    def leave(self, leaver: int, partner: int) -> None:
        """A graceful leaver hands its mass (and momentum copy) to ``partner``."""
        z, w = mixing.absorb(self.z[partner], float(self.w[partner]), self.z[leaver], float(self.w[leaver]))
        self.z[partner], self.w[partner] = z, w
        if self.zt is not None:
            self.zt[partner] = self.zt[partner] + self.zt[leaver]
        keep = [i for i in range(self.n) if i != leaver]
        self.z, self.w = self.z[keep], self.w[keep]
        self.zt = self.zt[keep] if self.zt is not None else None
        self.ids.pop(leaver)

    def gossip_round(self, r: int, topo: str, codec: str = "fp32", block_size: int = 64,
                     acc: a2cid2.A2cid2Constants | None = None) -> int:
        """One round of ``topo``; returns the number of committed pairwise exchanges."""
        if acc is not None and self.zt is not None:
            self.z, self.zt = a2cid2.ode_mix(self.z, self.zt, acc.eta, 1.0)
        u = torch.stack([mixing.encode(self.z[i], float(self.w[i]), self.anchor, codec, block_size)[1]
                         for i in range(self.n)])
        if topo in topology.STATIC:
            mix = torch.from_numpy(topology.static_weights(topo, self.n))
            delta, dw = mixing.static_delta(u, self.w, mix, self.anchor)
            self.z, self.w = self.z + delta, self.w + dw
            return 0
        index = {pid: i for i, pid in enumerate(self.ids)}
        order = [index[p] for p in topology.hash_order(RUN, self.ids)]
        partner = torch.full((self.n,), -1, dtype=torch.long)
        for rank, other in enumerate(topology.partner_ranks(topo, RUN, r, self.n)):
            if other >= 0:
                partner[order[rank]] = order[other]
        paired = partner >= 0
        idx, other = paired.nonzero().squeeze(1), partner[paired]
        delta = mixing.pair_delta(u[idx], self.w[idx], u[other], self.w[other], self.anchor)
        self.z[idx] += delta
        if acc is not None and self.zt is not None:
            self.zt[idx] = a2cid2.on_exchange(self.zt[idx], delta, acc.alpha_t)
        self.w[idx] = mixing.pair_weight(self.w[idx], self.w[other])
        return int(paired.sum()) // 2


def _fit_rate(dist: list[float], floor: float) -> float:
    """Per-round factor of the squared distance, fitted over the rounds above ``floor``."""
    ys = [math.log(d * d) for d in dist if d > floor]
    if len(ys) < 3:
        return float("nan")
    half = ys[len(ys) // 2:] if len(ys) >= 8 else ys  # skip the transient of fast-decaying modes
    slope = np.polyfit(np.arange(len(half)), half, 1)[0]
    return float(math.exp(slope))


def decay(sizes: list[int], rounds: dict[str, int], d: int = 32, seed: int = 0) -> dict:
    """Consensus distance per round for every topology and size, with the theory's rate."""
    out: dict = {"d": d, "series": []}
    for n in sizes:
        for topo, nr in rounds.items():
            sim = SimSwarm.random(n, d, seed, anchored=False)
            dist = [sim.distance()]
            for r in range(nr):
                sim.gossip_round(r, topo, "fp32")
                dist.append(sim.distance())
            floor = 1e-5 * dist[0]
            theory = topology.theory_rate(topo, n)
            reached = next((r for r, x in enumerate(dist) if x <= 1e-5 * dist[0]), None)
            out["series"].append({"topology": topo, "n": n, "distance": dist, "measured_rate": _fit_rate(dist, floor),
                                  "theory_rate": None if math.isnan(theory) else theory,
                                  "rounds_to_1e-5": reached, "log2_n": math.log2(n), "rounds": nr,
                                  "min_relative_distance": min(dist) / dist[0] if dist[0] > 0 else 0.0})
    return out


def churn(n: int, rounds: int, codec: str, every: int = 5, seed: int = 1, with_a2cid2: bool = False) -> dict:
    """Random-matching gossip with a join and a graceful leave every ``every`` rounds: mass drift."""
    rng = random.Random(seed)
    sim = SimSwarm.random(n, 32, seed, with_a2cid2=with_a2cid2)
    acc = a2cid2.constants(topology.expected_laplacian("random", n)) if with_a2cid2 else None
    z0, w0 = sim.mass()
    zt0 = sim.zt.sum(0) if sim.zt is not None else None
    drift_z, drift_w, drift_zt, sizes, events = [], [], [], [], 0
    for r in range(rounds):
        if r % every == every - 1:
            sim.join(rng.randrange(sim.n))
            leaver = rng.randrange(sim.n)
            sim.leave(leaver, (leaver + 1) % sim.n)
            events += 2
        sim.gossip_round(r, "random", codec, acc=acc)
        z, w = sim.mass()
        drift_z.append(float((z - z0).norm() / z0.norm()))
        drift_w.append(abs(w - w0) / w0)
        if zt0 is not None and sim.zt is not None:
            drift_zt.append(float((sim.zt.sum(0) - zt0).norm() / zt0.norm()))
        sizes.append(sim.n)
    return {"n": n, "codec": codec, "a2cid2": with_a2cid2, "joins_and_leaves": events,
            "rel_mass_drift": drift_z, "rel_weight_drift": drift_w, "rel_momentum_mass_drift": drift_zt,
            "max_rel_mass_drift": max(drift_z), "max_rel_weight_drift": max(drift_w), "sizes": sizes}


def codec_floor(n: int, rounds: int, topo: str = "random", seed: int = 2) -> dict:
    """Consensus distance per round for fp32/int8/int4, with and without an anchor near the swarm."""
    out = {"n": n, "topology": topo, "series": []}
    for anchored in (True, False):
        for codec in ("fp32", "bf16", "int8", "int4"):
            sim = SimSwarm.random(n, 256, seed, spread=0.05, anchored=anchored)
            dist = [sim.distance()]
            for r in range(rounds):
                sim.gossip_round(r, topo, codec)
                dist.append(sim.distance())
            last, before = float(np.mean(dist[-5:])), float(np.mean(dist[-10:-5])) if len(dist) >= 10 else math.inf
            # A floor is where the curve has flattened: still 20 % lower than 5 rounds before is not one.
            out["series"].append({"codec": codec, "anchored": anchored, "distance": dist, "floor": last,
                                  "start": dist[0], "still_falling": last < 0.8 * before})
    return out


def a2cid2_vs_plain(sizes: list[int], rounds: int, seed: int = 3,
                    topos: tuple[str, ...] = ("ring", "hypercube")) -> dict:
    """Consensus distance on a one-peer ring (and hypercube) with and without A2CiD2."""
    out: dict = {"series": []}
    for topo in topos:
        for n in sizes:
            acc = a2cid2.constants(topology.expected_laplacian(topo, n))
            for label, use, comms in (("plain", None, 1), ("a2cid2", acc, 1), ("plain_2x_comms", None, 2)):
                sim = SimSwarm.random(n, 32, seed, anchored=False, with_a2cid2=use is not None)
                dist = [sim.distance()]
                for r in range(rounds):
                    for k in range(comms):
                        sim.gossip_round(r * comms + k, topo, "fp32", acc=use)
                    dist.append(sim.distance())
                target = next((r for r, x in enumerate(dist) if x <= 0.1 * dist[0]), None)
                out["series"].append({"topology": topo, "n": n, "variant": label, "distance": dist,
                                      "rounds_to_10x": target, "eta": acc.eta, "alpha_t": acc.alpha_t,
                                      "chi1": acc.chi1, "chi2": acc.chi2})
    return out
